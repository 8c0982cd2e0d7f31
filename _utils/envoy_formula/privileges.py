"""
Who Envoy runs as. Salt and the restarter run as root; only Envoy itself drops to the envoy user,
keeping one capability, CAP_NET_BIND_SERVICE, as an ambient capability so an edge can bind 80 and
443 (what util-linux ``setpriv`` does). Unprivileged hosts (sandboxes, the demo) run Envoy as
whoever runs Salt.
"""

import grp
import os
import pwd
import shutil

from .errors import EnvoyFormulaError

SETPRIV = "setpriv"
BIND_CAPABILITY = "net_bind_service"


def envoy_ids(user, group):
    """(uid, gid) to run Envoy as, or None to run it as we are (not root, or user root/empty)."""
    if os.geteuid() != 0 or user in ("root", "", None):
        return None
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise EnvoyFormulaError(f"the envoy user {user!r} does not exist (envoy.user creates it; "
                                "or set envoy:lookup:user)") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise EnvoyFormulaError(f"the envoy group {group!r} does not exist (or set envoy:lookup:group)") from None
    return uid, gid


def envoy_uid(user, group):
    """The uid Envoy runs as on this host."""
    try:
        ids = envoy_ids(user, group)
    except EnvoyFormulaError:
        return 0
    return ids[0] if ids else os.geteuid()


def drop_command(uid, gid):
    """The argv prefix that execs a program as uid:gid with no supplementary groups and only the
    bind capability (inheritable and ambient, so it survives the exec)."""
    setpriv = shutil.which(SETPRIV, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not setpriv:
        raise EnvoyFormulaError("util-linux setpriv is not installed: cannot start Envoy as its own user")
    caps = f"-all,+{BIND_CAPABILITY}"
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}", "--"]
