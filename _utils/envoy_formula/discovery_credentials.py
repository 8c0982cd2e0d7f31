"""
The secrets of authenticated registration on a host, both issued by the master's ``envoy_discovery``
ext_pillar: every host's registration token (``envoy:discovery:auth:token``) and, on discovery
servers, the keys tokens are signed with (``envoy:discovery:server:auth_keys``). Here they go into
0600 files, written atomically and compared in constant time; nothing this module returns or
raises contains them, so neither state output nor logs can.

A value missing from pillar leaves its file alone: a master that failed to issue tokens for one
pillar render must not make a fleet delete its proofs (``envoy.discovery.clean`` removes them).
"""

import contextlib
import hmac
import os

from . import atomic_files, discovery_tokens
from .errors import EnvoyFormulaError

KINDS = {
    "token": ("auth", "token", "token_file", "envoy:discovery:auth:token"),
    "keys": ("server", "auth_keys", "keys_file", "envoy:discovery:server:auth_keys"),
}


def pillar_value(pillar_envoy, kind):
    """The secret of ``kind`` from pillar ``envoy`` (plain text), or None."""
    section, key, _, _ = KINDS[kind]
    value = (((pillar_envoy or {}).get("discovery") or {}).get(section) or {}).get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EnvoyFormulaError(f"pillar {KINDS[kind][3]} must be text (it is written by the master's "
                                "envoy_discovery ext_pillar, not by hand)")
    return value.strip() + "\n"


def path_of(host, kind):
    section, _, path_key, _ = KINDS[kind]
    if section == "auth":
        return host["discovery"]["auth"][path_key]
    return host["discovery"]["server"][path_key]


def status(host, pillar_envoy, kind):
    """{path, in_pillar, present, current}: whether the file holds what pillar has (never the value)."""
    path, value = path_of(host, kind), pillar_value(pillar_envoy, kind)
    if value is not None and kind == "keys":
        try:
            discovery_tokens.parse_keys(value, "pillar envoy:discovery:server:auth_keys")
        except discovery_tokens.KeysError as exc:
            raise EnvoyFormulaError(str(exc)) from None
    disk = atomic_files.read_text(path)
    mode = oct(os.stat(path).st_mode & 0o777) if disk is not None else None
    current = (value is not None and disk is not None and mode == oct(0o600)
               and hmac.compare_digest(disk.encode(), value.encode()))
    return {"kind": kind, "path": path, "in_pillar": value is not None, "present": disk is not None,
            "current": current, "file_mode": mode}


def write(host, pillar_envoy, kind):
    """Write pillar's value to its file (0600, in a 0700 directory). Returns :func:`status`."""
    path, value = path_of(host, kind), pillar_value(pillar_envoy, kind)
    if value is None:
        raise EnvoyFormulaError(f"pillar {KINDS[kind][3]} is not set: the master's envoy_discovery ext_pillar "
                                "issues it (docs/discovery.md, Who may register what)")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_files.write(path, value, mode=0o600)
    return status(host, pillar_envoy, kind)


def remove(host, kind):
    path = path_of(host, kind)
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
        return True
    return False
