"""
States for Envoy: ``envoy.bundle_installed``, ``envoy.config_managed``, ``envoy.running``.

Every state builds ``ret``, fills ``changes`` before the test check, returns ``result: None``
under ``test=True``, is idempotent, and turns ``CommandExecutionError`` into ``result: False``
with a readable comment. Secrets never reach ``changes`` or ``comment``.
"""

import logging

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "envoy"


def __virtual__():
    if "envoy.settings" in __salt__:
        return __virtualname__
    return (False, "the envoy execution module is not available (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


# --- bundles -----------------------------------------------------------------------------------


# --- config ------------------------------------------------------------------------------------


# --- running / mod_watch -----------------------------------------------------------------------
