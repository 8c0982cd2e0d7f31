"""
Failures Envoy cannot undo, caught before they happen.

- A new epoch that fails during Envoy's hot restart leaves its shared memory flagged: that Envoy
  then refuses every later hot restart, and the full restart that follows cannot drain. So before
  a HUP, every listener the new config adds must be able to bind.
- Epoch 0 replaces its base id's hot restart memory, but not memory another user's Envoy left in
  the sticky /dev/shm: Envoy would abort at every start.
"""

import logging
import os
import pwd
import socket

from . import admin_api, supervisor
from .errors import EnvoyFormulaError

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"


def listener_addresses(config):
    """{(address, port): listener name} of a bootstrap's listeners: its static ones and, in files
    mode, those of the listeners file its LDS config points at."""
    import yaml

    listeners = list(((config or {}).get("static_resources") or {}).get("listeners") or [])
    lds = (((config or {}).get("dynamic_resources") or {}).get("lds_config") or {}).get("path_config_source") or {}
    if lds.get("path"):
        with open(lds["path"], encoding="utf-8") as handle:
            listeners += (yaml.safe_load(handle) or {}).get("resources") or []
    found = {}
    for listener in listeners:
        sock = (listener.get("address") or {}).get("socket_address") or {}
        if "port_value" in sock:
            found[(sock.get("address", "0.0.0.0"), int(sock["port_value"]))] = listener.get("name", "?")
    return found


def bind_error(address, port):
    """Why ``address:port`` cannot be bound now (None when it can). Salt runs as root or as the
    user Envoy runs as, so what fails here fails for Envoy too."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def listeners_refused(host):
    """Why the config on disk must not be hot restarted into, or None. Listeners the running epoch
    has are handed over by Envoy itself."""
    import yaml

    try:
        with open(host["config_file"], encoding="utf-8") as handle:
            wanted = listener_addresses(yaml.safe_load(handle))
        running = admin_api.Admin(host["admin_port"]).listener_addresses()
    except (OSError, ValueError, KeyError, yaml.YAMLError, EnvoyFormulaError) as exc:
        log.debug("listener pre-flight skipped: %s", exc)  # Envoy's own start will tell
        return None
    problems = []
    for (addr, port), name in sorted(wanted.items()):
        error = None if (addr, port) in running else bind_error(addr, port)
        if error:
            problems.append(f"listener {name!r} cannot bind {addr}:{port}: {error}")
    if problems:
        return ("the new config was not started: " + "; ".join(problems)
                + " (checked before the hot restart; the running epoch keeps serving)")
    return None


def check_shared_memory(host):
    """Raise, with the way out, when another user's Envoy left this base id's hot restart memory."""
    path = os.path.join(SHM_DIR, f"envoy_shared_memory_{int(host['base_id']) * 10}")
    try:
        owner = os.stat(path).st_uid
    except FileNotFoundError:
        return
    runs_as = supervisor.envoy_uid(host)
    if runs_as in (0, owner):  # root, or the owner, may unlink it in the sticky /dev/shm
        return
    try:
        owner_name = pwd.getpwuid(owner).pw_name
    except KeyError:
        owner_name = str(owner)
    raise EnvoyFormulaError(
        f"{path} belongs to {owner_name}: an Envoy run as {owner_name} with base_id {host['base_id']} left it, "
        f"and Envoy as {host['user'] or 'this user'} cannot replace it. If no such Envoy runs any more, remove "
        f"that file; if one does, give this Envoy another envoy:lookup:base_id")
