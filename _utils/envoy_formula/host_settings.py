"""
Host settings: the one source of truth for everything the formula reads from pillar. ``map.jinja``
gets its dict from ``envoy.settings``, and every execution and state function resolves the same
dict, so an SLS file never repeats a key list and the two sides cannot disagree.

Later sources win: the defaults below, pillar (``envoy:lookup`` for the host itself; ``envoy:roles``,
``envoy:restart``, ``envoy:schedule``, ``envoy:discovery``, ``envoy:report``, ``envoy:bundle``,
``envoy:mesh_tls`` for the rest), then
keyword overrides of ``lookup`` keys. ``root`` prefixes every path once, so a whole host can live
in a sandbox directory without privileges (the demo and the tests); it is empty on real hosts.
"""

import copy
import os

from . import mesh_names
from .errors import EnvoyFormulaError

LOOKUP_DEFAULTS = {
    "root": "",
    "install_dir": "/opt/envoy",            # releases/<bundle id>/ and the `current` symlink
    "config_dir": "/etc/envoy",             # envoy.yaml (+ envoy.yaml.prev for rollback)
    "manifest_dir": "/etc/envoy/manifest.d",  # one manifest per service, dropped by its deploy
    "log_dir": "/var/log/envoy",
    "run_dir": "/run/envoy",                # the restarter's pid, lock and status files
    "user": "envoy",                        # Envoy runs as this user (the restarter drops to it)
    "group": "envoy",
    "base_id": 0,                           # one per Envoy on a host (hot restart shared memory)
    "admin_port": 9901,                     # the admin API, always on 127.0.0.1
    "supervisor": "auto",                   # systemd | daemon | auto (systemd when the host has it)
    "keep_releases": 3,
    "manage_user": True,                    # create user/group (only as root, user != root)
    # files: routes, clusters and listeners are xDS files the running Envoy applies without a
    # restart; static: one envoy.yaml, every change a hot restart; auto: files for a new install,
    # static for a host that already runs a static config (change it here to switch).
    "config_mode": "auto",
    # Mesh TLS: keys, certificates and the SDS files Envoy reads them through (mesh_names).
    "pki_dir": "/etc/envoy/pki",
}
PATH_KEYS = ("install_dir", "config_dir", "manifest_dir", "log_dir", "run_dir", "pki_dir")
INT_KEYS = ("base_id", "admin_port", "keep_releases")

SCHEDULE_DEFAULTS = {
    "method": "none",   # minion (Salt's scheduler) | cron | systemd | none
    "minutes": 15,
    "seconds": 0,       # minion method only: sub-minute intervals (tests)
    "splay": 300,       # random delay, seconds, so a fleet does not converge at once
    "salt_call": "/usr/bin/salt-call",
}
SCHEDULE_METHODS = ("minion", "cron", "systemd", "none")

# Per role: service-to-service connections are short; the edge keeps long-lived clients longer.
RESTART_ROLE_DEFAULTS = {
    "sidecar": {"drain_time_s": 60, "parent_shutdown_time_s": 90},
    "front": {"drain_time_s": 300, "parent_shutdown_time_s": 450},
}
RESTART_DEFAULTS = {
    "live_timeout_s": 60,          # a new epoch not LIVE by then is a failed restart
    "stop_timeout_s": 30,          # SIGTERM, then SIGKILL
    "full_restart_drain_s": None,  # health check failing before a full restart; None: drain_time_s
    "concurrency": None,           # Envoy's worker threads; None: one per core
    "envoy_args": [],
}
RESTART_KEYS = ("drain_time_s", "parent_shutdown_time_s", *RESTART_DEFAULTS)

DISCOVERY_DEFAULTS = {
    "url": None,        # registration base URL, or a list of them; default http://<address> for each
    # host:port where Envoy and hosts reach the discovery service, or a list of host:port: several
    # instances sharing one Redis (Envoy retries a failed fetch on another, hosts register with any)
    "address": None,
    "register": {"enabled": True, "ip": None, "tags": {}, "revision": None, "timeout": 5,
                 "minutes": 1, "seconds": None, "splay": 20, "schedule_offline": None},
    # Authenticated registration (docs/discovery.md, "Who may register what"). The token itself
    # (envoy:discovery:auth:token) and the servers' keys (envoy:discovery:server:auth_keys) come from
    # the master's ext_pillar and are deliberately left out of these settings: they never reach a
    # state's arguments, a schedule's job or `envoy.settings` output.
    "auth": {
        "mode": "off",       # the servers: off | audit (check, count, log, accept) | enforce (403)
        "services": [],      # read by the master (ext_pillar): what this minion may register
        "addresses": [],     # read by the master: pinned addresses (default: the minion's own ipv4 grains)
        "token_file": None,  # default <config_dir>/discovery/token (0600)
        "peer_check": True,  # the servers: a registered ip must be the address the request came from
    },
    "server": {"hosts": None, "listen": "0.0.0.0:8080", "ttl": 600, "redis": None,
               "sqlite": "/var/lib/envoy-discovery/hosts.sqlite3", "command": "envoy-discovery",
               "env": "production", "workers": 1, "sweep_guard": 0.5, "sweep_guard_min": 1,
               "sweep_grace": None, "sweep_interval": None,
               "keys_file": None},   # default <config_dir>/discovery/keys (0600)
}
AUTH_MODES = ("off", "audit", "enforce")
# Pillar values the formula reads only where it writes them to their 0600 files.
DISCOVERY_SECRETS = (("auth", "token"), ("server", "auth_keys"))

# The fleet report (salt/envoy/report): this host's status summary, published to the Salt mine.
REPORT_DEFAULTS = {
    "enabled": True,           # false: stop publishing (the master then shows this host's row ageing)
    "minutes": 1,              # publish interval: the report is at most this old (plus splay)
    "seconds": None,           # an interval in seconds instead (tests)
    "splay": 10,               # random delay of each publish, seconds
    "drift": True,             # compare the config on disk with what its inputs render
    "schedule_offline": None,  # write the job for the minion's next start (default: as discovery's)
}

SYSTEMD_UNIT_DIR = "/etc/systemd/system"


def _section(pillar, name, kind=dict):
    value = pillar.get(name)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise EnvoyFormulaError(f"pillar envoy:{name} must be a {'mapping' if kind is dict else 'list'}, "
                                f"not {type(value).__name__}")
    return value


def _merge(base, extra):
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def _rooted(root, path):
    root = (root or "").rstrip("/")
    if not root or not path:
        return path
    return path if path == root or path.startswith(root + "/") else root + path


def _lookup(pillar, lookup, overrides):
    if lookup is None:
        lookup = _section(pillar, "lookup")
    unknown = sorted(set(overrides) - set(LOOKUP_DEFAULTS))
    if unknown:
        raise EnvoyFormulaError(f"unknown host setting(s) {', '.join(unknown)}; known: {', '.join(LOOKUP_DEFAULTS)}")
    merged = {**LOOKUP_DEFAULTS}
    for source in (lookup, overrides):
        merged.update({k: v for k, v in source.items() if k in LOOKUP_DEFAULTS and v is not None})
    for key in INT_KEYS:
        try:
            merged[key] = int(merged[key])
        except (TypeError, ValueError):
            raise EnvoyFormulaError(f"pillar envoy:lookup:{key}={merged[key]!r}: expected a whole number") from None
    if not 0 < merged["admin_port"] < 65536:
        raise EnvoyFormulaError(f"pillar envoy:lookup:admin_port={merged['admin_port']}: expected a port (1-65535)")
    for key in PATH_KEYS:
        if not str(merged[key]).startswith("/"):
            raise EnvoyFormulaError(f"pillar envoy:lookup:{key}={merged[key]!r}: expected an absolute path")
        merged[key] = _rooted(merged["root"], str(merged[key]))
    if merged["supervisor"] not in ("auto", "systemd", "daemon"):
        raise EnvoyFormulaError(f"pillar envoy:lookup:supervisor={merged['supervisor']!r}: "
                                "expected systemd, daemon or auto")
    if merged["config_mode"] not in ("auto", "files", "static"):
        raise EnvoyFormulaError(f"pillar envoy:lookup:config_mode={merged['config_mode']!r}: "
                                "expected files, static or auto")
    return merged


def restart_timings(pillar, overrides=None):
    """Hot restart timings: the longest of this host's roles' defaults, then pillar
    ``envoy:restart:roles:<role>``, then the flat keys of ``envoy:restart``, then ``overrides``."""
    restart = _section(pillar, "restart")
    roles = pillar.get("roles") or ["sidecar"]
    tables = copy.deepcopy(RESTART_ROLE_DEFAULTS)
    for role, values in (restart.get("roles") or {}).items():
        tables[role] = {**tables.get(role, {}), **(values or {})}
    merged = dict(RESTART_DEFAULTS, drain_time_s=0, parent_shutdown_time_s=0)
    for role in roles:
        for key, value in tables.get(role, tables["sidecar"]).items():
            merged[key] = max(merged.get(key) or 0, value)
    for source in (restart, overrides or {}):
        merged.update({k: v for k, v in source.items() if k in RESTART_KEYS and v is not None})
    for key in ("drain_time_s", "parent_shutdown_time_s", "live_timeout_s", "stop_timeout_s"):
        if isinstance(merged[key], bool) or not isinstance(merged[key], (int, float)) or merged[key] <= 0:
            raise EnvoyFormulaError(f"pillar envoy:restart:{key}={merged[key]!r}: expected a positive number")
    if merged["drain_time_s"] >= merged["parent_shutdown_time_s"]:
        raise EnvoyFormulaError(f"pillar envoy:restart: drain_time_s={merged['drain_time_s']} must be below "
                                f"parent_shutdown_time_s={merged['parent_shutdown_time_s']}")
    if merged["full_restart_drain_s"] is None:
        merged["full_restart_drain_s"] = merged["drain_time_s"]
    if not isinstance(merged["envoy_args"], list):
        raise EnvoyFormulaError("pillar envoy:restart:envoy_args must be a list of Envoy options")
    return merged


def _schedule(pillar):
    merged = _merge(SCHEDULE_DEFAULTS, _section(pillar, "schedule"))
    if merged["method"] not in SCHEDULE_METHODS:
        raise EnvoyFormulaError(f"pillar envoy:schedule:method={merged['method']!r}: expected "
                                + ", ".join(SCHEDULE_METHODS))
    for key in ("minutes", "seconds", "splay"):
        if isinstance(merged[key], bool) or not isinstance(merged[key], int) or merged[key] < 0:
            raise EnvoyFormulaError(f"pillar envoy:schedule:{key}={merged[key]!r}: expected a whole number >= 0")
    return merged


def _discovery(pillar, root, schedule_method, config_dir):
    merged = _merge(DISCOVERY_DEFAULTS, _without_secrets(_section(pillar, "discovery")))
    merged["urls"] = discovery_urls(merged)
    if not merged["url"] and merged["urls"]:
        merged["url"] = merged["urls"][0] if len(merged["urls"]) == 1 else list(merged["urls"])
    register, server, auth = merged["register"], merged["server"], merged["auth"]
    if register["schedule_offline"] is None:
        # Only a running salt-minion applies a schedule change at once; elsewhere (masterless
        # salt-call) the job is written to the minion's schedule file for its next start.
        register["schedule_offline"] = schedule_method != "minion"
    server["sqlite"] = _rooted(root, server["sqlite"])
    auth["token_file"] = _rooted(root, auth["token_file"]) or os.path.join(config_dir, "discovery", "token")
    server["keys_file"] = _rooted(root, server["keys_file"]) or os.path.join(config_dir, "discovery", "keys")
    _check_discovery(merged)
    return merged


def _without_secrets(discovery):
    out = copy.deepcopy(discovery)
    for section, key in DISCOVERY_SECRETS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def _listed(value, key):
    """A string or a list of strings as a list (envoy:discovery:<key> may name several instances)."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise EnvoyFormulaError(f"pillar envoy:discovery:{key}={value!r}: expected host:port or a list of them"
                                if key == "address" else
                                f"pillar envoy:discovery:{key}={value!r}: expected a URL or a list of URLs")
    return list(items)


def discovery_urls(discovery):
    """Every registration base URL: ``url`` (one or a list), else http://<address> for each address."""
    urls = _listed(discovery.get("url"), "url") or [f"http://{a}" for a in _listed(discovery.get("address"), "address")]
    return [url.rstrip("/") for url in urls]


def _number(value, key, low, high=None, whole=False, above=False):
    """``value`` within [low, high] (``above``: strictly above ``low``), or an error naming the key."""
    kind = int if whole else (int, float)
    fits = (not isinstance(value, bool) and isinstance(value, kind)
            and (value > low if above else value >= low) and (high is None or value <= high))
    if not fits:
        wanted = f"a {'whole ' if whole else ''}number {'above' if above else 'from'} {low}" \
                 + (f" to {high}" if high is not None else "")
        raise EnvoyFormulaError(f"pillar envoy:discovery:{key}={value!r}: expected {wanted}")
    return value


def _check_discovery(discovery):
    server, auth = discovery["server"], discovery["auth"]
    _number(server["workers"], "server:workers", 1, 64, whole=True)
    _number(server["sweep_guard"], "server:sweep_guard", 0, 1, above=True)  # 1 turns the guard off
    _number(server["sweep_guard_min"], "server:sweep_guard_min", 0, whole=True)
    for key in ("ttl", "sweep_grace", "sweep_interval"):
        if server[key] is not None:
            _number(server[key], f"server:{key}", 0, above=True)
    if auth["mode"] is False:  # YAML 1.1 (Salt's loader) reads an unquoted `off` as false
        auth["mode"] = "off"
    if auth["mode"] not in AUTH_MODES:
        raise EnvoyFormulaError(f"pillar envoy:discovery:auth:mode={auth['mode']!r}: expected "
                                + ", ".join(AUTH_MODES))
    for key in ("services", "addresses"):
        if not isinstance(auth[key], list) or not all(isinstance(item, str) and item for item in auth[key]):
            raise EnvoyFormulaError(f"pillar envoy:discovery:auth:{key}={auth[key]!r}: expected a list of names")
    if not isinstance(auth["peer_check"], bool):
        raise EnvoyFormulaError(f"pillar envoy:discovery:auth:peer_check={auth['peer_check']!r}: expected true "
                                "or false")


def _report(pillar, schedule_method):
    merged = _merge(REPORT_DEFAULTS, _section(pillar, "report"))
    for key in ("minutes", "seconds", "splay"):
        value = merged[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise EnvoyFormulaError(f"pillar envoy:report:{key}={value!r}: expected a whole number >= 0")
    if not (merged["seconds"] or merged["minutes"]):
        raise EnvoyFormulaError("pillar envoy:report: minutes or seconds must be above 0 (the publish interval)")
    if merged["schedule_offline"] is None:
        merged["schedule_offline"] = schedule_method != "minion"
    merged["interval_s"] = merged["seconds"] or merged["minutes"] * 60
    return merged


MESH_TLS_DEFAULTS = mesh_names.DEFAULTS


def _mesh_tls(pillar):
    """``envoy:mesh_tls`` over its defaults, checked for what the formula itself needs (the config
    generator checks the whole section again, with every other problem of the pillar)."""
    merged = _merge(MESH_TLS_DEFAULTS, _section(pillar, "mesh_tls"))
    mode = merged["mode"] = mesh_names.mode_of(merged["mode"])
    if mode not in mesh_names.MODES:
        raise EnvoyFormulaError(f"pillar envoy:mesh_tls:mode={mode!r}: expected " + ", ".join(mesh_names.MODES))
    for key in ("days_valid", "renew_days_remaining"):
        if isinstance(merged[key], bool) or not isinstance(merged[key], int) or merged[key] < 0:
            raise EnvoyFormulaError(f"pillar envoy:mesh_tls:{key}={merged[key]!r}: expected a whole number of days")
    if mode == "off":
        return merged
    trust_domain = merged["trust_domain"]
    if not isinstance(trust_domain, str) or not mesh_names.TRUST_DOMAIN.fullmatch(trust_domain):
        raise EnvoyFormulaError(f"pillar envoy:mesh_tls:trust_domain={trust_domain!r}: mode {mode} needs a SPIFFE "
                                "trust domain such as mesh.example.com")
    if not merged["ca"]["minion"]:
        raise EnvoyFormulaError(f"pillar envoy:mesh_tls:ca:minion is not set: mode {mode} needs the minion whose "
                                "mesh CA signs the certificates (docs/mesh-tls.md)")
    if merged["renew_days_remaining"] >= merged["days_valid"]:
        raise EnvoyFormulaError(f"pillar envoy:mesh_tls:renew_days_remaining={merged['renew_days_remaining']} must "
                                f"be below days_valid={merged['days_valid']}, else every highstate renews")
    return merged


def _bundle(pillar, keep_releases):
    bundle = _section(pillar, "bundle")
    return {"source": bundle.get("source"), "sha256": bundle.get("sha256"),
            "keep": bundle.get("keep", keep_releases)}


def supervisor_kind(configured, root, grains, euid):
    """``systemd`` or ``daemon``: ``auto`` means systemd when the init grain says systemd, the host is
    not a sandbox (no ``root``), we are root and the unit directory is writable."""
    if configured in ("systemd", "daemon"):
        return configured
    if grains.get("init") == "systemd" and not root and euid == 0 and os.access(SYSTEMD_UNIT_DIR, os.W_OK):
        return "systemd"
    return "daemon"


def resolve(pillar, lookup=None, grains=None, euid=None, overrides=None):
    """Every setting of this host. ``pillar``: the pillar ``envoy`` dict; ``lookup``: ``envoy:lookup``
    as Salt's config.get sees it (minion config may set it too), default pillar's own;
    ``overrides``: ``lookup`` keys, plus ``discovery`` (merged over pillar's: a scheduled job that
    must not depend on pillar carries it)."""
    pillar = pillar if isinstance(pillar, dict) else {}
    overrides = dict(overrides or {})
    if overrides.get("discovery") is not None:
        pillar = {**pillar, "discovery": _merge(_section(pillar, "discovery"), overrides["discovery"])}
    overrides.pop("discovery", None)
    host = _lookup(pillar, lookup, overrides)
    # The lookup as resolved: `envoy.<function> **lookup` reproduces this host without pillar.
    host["lookup"] = {key: host[key] for key in LOOKUP_DEFAULTS}
    root = host["root"]
    host["supervisor_configured"] = host["supervisor"]
    host["supervisor"] = supervisor_kind(host["supervisor"], root, grains or {},
                                         os.geteuid() if euid is None else euid)
    host["config_file"] = os.path.join(host["config_dir"], "envoy.yaml")
    host["current_dir"] = os.path.join(host["install_dir"], "current")
    host["systemd_dir"] = _rooted(root, SYSTEMD_UNIT_DIR)
    host["cron_dir"] = _rooted(root, "/etc/cron.d")
    host["roles"] = list(pillar.get("roles") or ["sidecar"])
    host["schedule"] = _schedule(pillar)
    host["restart"] = restart_timings(pillar)
    host["discovery"] = _discovery(pillar, root, host["schedule"]["method"], host["config_dir"])
    host["report"] = _report(pillar, host["schedule"]["method"])
    host["bundle"] = _bundle(pillar, host["keep_releases"])
    host["mesh_tls"] = _mesh_tls(pillar)
    return host
