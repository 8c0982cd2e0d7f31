"""
Execution module ``envoy``: install Envoy bundles, render and validate this host's config,
and operate the running Envoy (status, hot restart, drain, health check, stats).

Host settings come from three places, later ones winning:
the production defaults below (the same as ``salt/envoy/parameters/defaults.yaml``),
pillar/minion config ``envoy:lookup``, and keyword arguments (the formula's states pass the
values of ``map.jinja`` explicitly). ``root`` prefixes every path, so a whole host can live in a
sandbox directory without privileges.
"""

import logging
import os

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "envoy"

DEFAULTS = {
    "root": "",
    "install_dir": "/opt/envoy",
    "config_dir": "/etc/envoy",
    "manifest_dir": "/etc/envoy/manifest.d",
    "log_dir": "/var/log/envoy",
    "run_dir": "/run/envoy",
    "user": "envoy",
    "group": "envoy",
    "base_id": 0,
    "admin_port": 9901,
    "supervisor": "auto",
    "keep_releases": 3,
}
PATH_KEYS = ("install_dir", "config_dir", "manifest_dir", "log_dir", "run_dir")


def __virtual__():
    return __virtualname__


def settings(**overrides):
    """
    The effective host settings: defaults, then ``envoy:lookup``, then ``overrides``
    (unknown keys are ignored so states can pass ``map.jinja``'s whole dict).
    Paths come back with the sandbox ``root`` applied.

    CLI Example:

    .. code-block:: bash

        salt-call envoy.settings
    """
    merged = dict(DEFAULTS)
    lookup = __salt__["config.get"]("envoy:lookup", {}) or {}
    for source in (lookup, overrides):
        merged.update({k: v for k, v in source.items() if k in DEFAULTS and v is not None})
    root = merged["root"] or ""
    for key in PATH_KEYS:
        path = merged[key]
        # map.jinja already applied the root to what states pass in: never prefix twice.
        if root and not path.startswith(root.rstrip("/") + "/"):
            path = root.rstrip("/") + path
        merged[key] = path
    merged["config_file"] = os.path.join(merged["config_dir"], "envoy.yaml")
    merged["current_dir"] = os.path.join(merged["install_dir"], "current")
    return merged


# --- bundles (issue: foundation and the Envoy bundle) ------------------------------------------


# --- config: render and validate (issue: manifest, pillar and config generator) ---------------


# --- operations: supervisor, hot restart, admin API (issue: hot restart done right) -----------


# --- discovery registration (issue: service discovery) ----------------------------------------
