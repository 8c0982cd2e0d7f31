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


def _bundle_desc(brief):
    return f"{brief['bundle_id']} (envoy {brief['envoy_version']})" if brief else "none"


def bundle_installed(name, sha256=None, keep=None, **kwargs):
    """
    Make the bundle at ``name`` (salt://, https://, http:// or file://) with archive ``sha256``
    the current release. Idempotent: when that archive is already current nothing is downloaded.

    .. code-block:: yaml

        envoy-bundle-installed:
          envoy.bundle_installed:
            - name: https://repo.example/envoy-bundle-1.40.0-0123456789ab.tar.gz
            - sha256: <64 hex>
            - keep: 3
    """
    ret = _ret(name)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    try:
        plan = __salt__["envoy.bundle_plan"](name, sha256=sha256, **kwargs)
    except CommandExecutionError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    if plan["action"] == "none":
        ret["comment"] = f"bundle {_bundle_desc(plan['old'])} is already current; nothing downloaded"
        return ret
    if plan["action"] == "switch":
        new = plan["release"]
        predicted = f"switch to installed release {_bundle_desc(new)}"
    else:
        new = f"bundle with sha256 {plan['sha256']}"
        predicted = f"download and install the {new} from {name}"
    ret["changes"] = {"old": plan["old"], "new": new}
    if __opts__["test"]:
        ret.update(result=None, comment=f"would {predicted} (current: {_bundle_desc(plan['old'])})")
        return ret
    try:
        done = __salt__["envoy.install_bundle"](name, sha256=sha256, keep=keep, **kwargs)
    except CommandExecutionError as exc:
        ret.update(result=False, changes={}, comment=f"bundle not installed, current left as it was: {exc}")
        return ret
    ret["changes"] = {"old": done["old"], "new": done["new"]} if done["old"] != done["new"] else {}
    if done["pruned"]:
        ret["changes"]["pruned"] = done["pruned"]
    ret["comment"] = done["comment"]
    return ret


# --- config ------------------------------------------------------------------------------------


# --- running / mod_watch -----------------------------------------------------------------------
