"""
The envoy formula's library: plain Python, one job per module, no Salt in it. Salt's front ends
(``_modules/envoy.py``, ``_states/envoy.py``, ``_runners/``) translate Salt's world into calls here.

Salt syncs this package like any custom module (``saltutil.sync_all`` copies ``_utils/`` to every
minion and master) and loads it through ``__utils__``: front ends call
``__utils__["envoy_formula.library"]()`` and use the modules below by name. The bundle ships a copy
too, for what the restarter shares with the formula (``restarter_status``, ``privileges``).

Data flow on a host: bundle_releases (fetch, verify, unpack, flip ``current``) -> config_render
(manifests + pillar through the bundle's generator) -> config_validate (the bundle's envoy) ->
config_file (atomic write, ``.prev``) -> lifecycle (start, hot or full restart, rollback) through
supervisor (the restarter) -> discovery_registration (heartbeats) -> report_summary (what the
host publishes to the mine). Mesh TLS: mesh_identity (keys and certificates by Salt's x509
states, SDS files for Envoy), names shared with the bundle's generator in mesh_names. On the
master, the runner reads the mine through fleet_report, burndown, report_html, dashboards and
prometheus_config.
"""

import importlib
import sys

# Every module, imported by ``library()`` once Salt's loader has registered this package (its
# loader runs a package's __init__ before putting it in sys.modules, so nothing is imported here).
# A long-running minion re-executes this file after saltutil.sync_all: modules an earlier
# execution imported are then reloaded by the next library() call, so the next job runs the
# synced code. (Salt 3008 also drops its loaded modules on a refresh; this does not depend on it.)
# Listed, and so reloaded, dependencies first: a module that imports a name from another (the error
# class) then binds the reloaded one.
MODULES = (
    "errors", "redaction", "atomic_files", "local_http", "processes", "privileges", "mesh_names", "host_settings",
    "bundle_format", "bundle_archive", "bundle_sources", "bundle_releases",
    "config_render", "config_validate", "config_file", "config_files", "config_changes", "rejected_inputs",
    "admin_api", "restarter_status", "supervisor", "preflight", "lifecycle", "highstate_record", "status_report",
    "xds_acceptance", "xds_apply", "config_apply",
    "discovery_tokens", "discovery_guard", "discovery_credentials", "discovery_issuer", "discovery_registration",
    "discovery_presence", "discovery_daemon", "mesh_identity",
    "config_drift", "traffic_sample", "report_summary",
    "fleet_report", "burndown", "report_html", "dashboards", "prometheus_config",
)
# Imported before this execution of the package: possibly older than the files on disk.
_stale = [name for name in MODULES if f"{__name__}.{name}" in sys.modules]


def library():
    """This package with every module loaded, for the Salt front ends:
    ``lib = __utils__["envoy_formula.library"]()``, then ``lib.bundle_releases.install(...)``."""
    while _stale:
        importlib.reload(sys.modules[f"{__name__}.{_stale.pop(0)}"])
    for name in MODULES:
        if f"{__name__}.{name}" not in sys.modules:
            importlib.import_module(f"{__name__}.{name}")
    return sys.modules[__name__]
