"""
The adoption burndown: for each service in the catalogue and each service with a manifest, is it on
Envoy yet? From the hosts' mine entries (``report_summary``):

- ``hosts``: hosts whose manifests declare the service;
- ``deployed``: those reporting in time with Envoy LIVE (the manifest is in place, so Envoy routes it);
- ``in_use``: deployed hosts where requests went through Envoy between the host's last two samples
  (its ingress listener's counter grew, or the egress listener's for a service that calls others).

A service is ``not started`` (no deployed host), ``deployed`` (Envoy runs it, no traffic seen) or
``in use``. Every run appends a point to a small SQLite history on the master, so
``salt-run envoy.burndown`` can show the trend.
"""

import contextlib
import os
import sqlite3

STATES = ("not started", "deployed", "in use")
SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    at REAL NOT NULL,
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    hosts INTEGER NOT NULL,
    deployed INTEGER NOT NULL,
    in_use INTEGER NOT NULL,
    PRIMARY KEY (at, service)
)
"""


def _declared(entry):
    """{service: manifest} of one host's entry."""
    services = ((entry.get("manifests") or {}).get("services")) or []
    return {m["service"]: m for m in services if isinstance(m, dict) and m.get("service")}


def _delta(entry, listener):
    listeners = ((entry.get("traffic") or {}).get("listeners")) or {}
    value = (listeners.get(listener) or {}).get("delta")
    return value if isinstance(value, int) else None


def _traffic(entry, manifest):
    """(ingress requests, egress requests) since the host's previous sample; None where unknown
    or not declared. A host's egress listener is shared by its services."""
    ingress = _delta(entry, f"ingress_{manifest['service']}") if manifest.get("ingress") else None
    egress = _delta(entry, "egress") if manifest.get("upstreams") else None
    return ingress, egress


def _add(total, value):
    return total if value is None else (total or 0) + value


def _service(name, catalogue):
    return {"service": name, "in_catalogue": name in catalogue, "hosts": [], "deployed": [], "in_use": [],
            "ingress_rq": None, "egress_rq": None}


def classify(entries, healthy):
    """One row per service, sorted by name. ``entries``: {minion: mine entry}; ``healthy``: the
    minions reporting in time (a stale entry's LIVE says nothing about now)."""
    catalogue = set()
    for entry in entries.values():
        if isinstance(entry, dict):
            catalogue.update(entry.get("catalogue") or [])
    services = {name: _service(name, catalogue) for name in catalogue}
    for minion, entry in sorted(entries.items()):
        if not isinstance(entry, dict):
            continue
        live = minion in healthy and bool((entry.get("status") or {}).get("live"))
        for name, manifest in _declared(entry).items():
            item = services.setdefault(name, _service(name, catalogue))
            item["hosts"].append(minion)
            if not live:
                continue
            item["deployed"].append(minion)
            ingress, egress = _traffic(entry, manifest)
            item["ingress_rq"], item["egress_rq"] = _add(item["ingress_rq"], ingress), _add(item["egress_rq"], egress)
            if (ingress or 0) > 0 or (egress or 0) > 0:
                item["in_use"].append(minion)
    for item in services.values():
        item["state"] = "in use" if item["in_use"] else "deployed" if item["deployed"] else "not started"
    return [services[name] for name in sorted(services)]


def totals(services):
    out = dict.fromkeys(STATES, 0)
    for item in services:
        out[item["state"]] += 1
    return out


# --- history -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _db(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    connection = sqlite3.connect(path, timeout=10)
    try:
        with connection:
            connection.execute(SCHEMA)
            yield connection
    finally:
        connection.close()


def append(path, at, services):
    """Record one point: every service's state and counts at ``at`` (unix seconds)."""
    with _db(path) as db:
        db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?)",
                       [(at, s["service"], s["state"], len(s["hosts"]), len(s["deployed"]), len(s["in_use"]))
                        for s in services])


def trend(path, since=None):
    """[{at, not started, deployed, in use}] oldest first: how many services were in each state at
    each recorded point (since ``since``, unix seconds)."""
    if not os.path.exists(path):
        return []
    with _db(path) as db:
        found = db.execute("SELECT at, state, COUNT(*) FROM points WHERE at >= ? GROUP BY at, state ORDER BY at",
                           (since or 0,)).fetchall()
    points = {}
    for at, state, count in found:
        points.setdefault(at, {"at": at, **dict.fromkeys(STATES, 0)})[state] = count
    return list(points.values())


def service_history(path, service, since=None):
    """[{at, state, hosts, deployed, in_use}] of one service, oldest first."""
    if not os.path.exists(path):
        return []
    with _db(path) as db:
        found = db.execute("SELECT at, state, hosts, deployed, in_use FROM points WHERE service = ? AND at >= ? "
                           "ORDER BY at", (service, since or 0)).fetchall()
    return [dict(zip(("at", "state", "hosts", "deployed", "in_use"), item, strict=True)) for item in found]
