"""
Requests through this host's Envoy since the previous sample: each service's ingress (health checks
left out) and the egress listener, read from the admin API's counters. The previous sample is kept in the run
dir, so two publishes of the report are two samples and the adoption burndown can tell a service
whose traffic really goes through Envoy ("in use") from one whose Envoy merely runs.
"""

import os
import re
import time

from . import admin_api, atomic_files
from .errors import EnvoyFormulaError

FILE = "report-traffic.json"
# A service's requests at its ingress, without the health checks callers' Envoys send it (the
# generator counts those in a virtual cluster of their own; "other" is everything else), and the
# requests the host's apps sent out through the egress listener.
_INGRESS = re.compile(r"^vhost\.local_(.+)\.vcluster\.other\.upstream_rq_total$")
_EGRESS = "http.egress.downstream_rq_total"


def read_counters(admin_port):
    """{"ingress_<service>" | "egress": requests} of the running Envoy."""
    stats = admin_api.Admin(admin_port).stats(f"{_INGRESS.pattern}|^{re.escape(_EGRESS)}$")
    out = {"egress": int(stats[_EGRESS])} if _EGRESS in stats else {}
    for name, value in stats.items():
        match = _INGRESS.match(name)
        if match:
            out[f"ingress_{match.group(1)}"] = int(value)
    return out


def delta(now, before):
    """Requests counted since ``before``; a counter that went down started again at 0 (a full
    restart), so all of its value is new."""
    if before is None:
        return None
    return now - before if now >= before else now


def compare(counters, previous, now):
    """{listener: {total, delta}} and the seconds between the samples (None on the first)."""
    before = (previous or {}).get("counters") or {}
    over = now - previous["at"] if previous and previous.get("at") else None
    listeners = {name: {"total": total, "delta": delta(total, before.get(name)) if over else None}
                 for name, total in sorted(counters.items())}
    return {"listeners": listeners, "over_s": over}


def sample(host, live, now=None):
    """This sample compared with the previous one (and kept for the next). Envoy not LIVE: no
    counters, and the previous sample stays."""
    now = now or time.time()
    if not live:
        return {"listeners": {}, "over_s": None}
    try:
        counters = read_counters(host["admin_port"])
    except EnvoyFormulaError as exc:
        return {"listeners": {}, "over_s": None, "error": str(exc)}
    path = os.path.join(host["run_dir"], FILE)
    try:
        previous = atomic_files.read_json(path)
    except (OSError, ValueError):
        previous = None
    out = compare(counters, previous, now)
    try:
        atomic_files.write_json(path, {"at": now, "counters": counters})
    except OSError:
        pass
    return out
