"""
What a host publishes to the Salt mine for the fleet report (``salt-run envoy.report``), every
``envoy:report`` interval: the gist of ``envoy.status`` plus what only the host can tell - its
manifests, drift (``config_drift``), its registrations in discovery and how fresh they are, the
requests its listeners served since the previous publish (``traffic_sample``), and where
Prometheus scrapes it. Compact on purpose: the master reads one of these per minion.

Each part is gathered on its own: one that fails says why in its place, the rest still arrive.
"""

import os
import time

from . import config_drift, discovery_registration, rejected_inputs, status_report, traffic_sample
from .errors import EnvoyFormulaError

FORMAT = 1
MINE_FUNCTION = "envoy.report"  # the name the summary has in the mine


def _status(full):
    last = full.get("last_restart") or {}
    highstate = full.get("highstate") or {}
    return {
        "summary": full.get("summary"),
        "live": full.get("live"), "running": full.get("running"), "state": full.get("state"),
        "epoch": full.get("epoch"), "envoy_version": full.get("envoy_version"),
        "bundle": full.get("bundle"), "config_sha256": full.get("config_sha256"),
        "uptime_s": full.get("uptime_s"),
        "last_restart": {key: last.get(key) for key in ("kind", "outcome", "error", "finished_at", "started_at")}
        if last else None,
        "highstate": {key: highstate.get(key) for key in ("result", "finished_at", "failed_count")} if highstate else None,
        "restart_queued": full.get("restart_queued"),
    }


def _rejected(host, full):
    """Updates Envoy refused: files-mode subscriptions whose update_rejected counter moved, and the
    inputs the formula remembers as refused (``rejected_inputs``, until they change or are cleared)."""
    resources = full.get("resources") or {}
    record = rejected_inputs.last(host)
    return {"subscriptions": {key: value["rejected"] for key, value in sorted(resources.items())
                              if value.get("rejected")},
            "inputs": {"reason": record.get("reason"), "at": record.get("at")} if record else None}


def manifests(host):
    """Each manifest's service, whether it has an ingress, and the services it calls."""
    found, problems = discovery_registration.read_manifests(host["manifest_dir"])
    out = []
    for path, data, _digest in found:
        upstreams = [u.get("service") for u in data.get("upstreams") or [] if isinstance(u, dict)]
        out.append({"service": data["service"], "file": os.path.basename(path), "ingress": bool(data.get("ingress")),
                    "upstreams": sorted(u for u in upstreams if isinstance(u, str))})
    return {"services": out, "problems": problems}


def _discovery(host, grains):
    if not host["discovery"]["url"]:
        return {"configured": False}
    listed = discovery_registration.status(host, grains)
    return {"configured": True, "problems": listed["problems"],
            "services": [{"service": e["service"], "listed": e["listed"], "current": e["current"],
                          "last_check_in": e.get("last_check_in")} for e in listed["services"]]}


def scrape_target(pillar, host, grains):
    """Where Prometheus reaches this host's stats listener (None without one)."""
    stats = ((pillar.get("listeners") or {}).get("stats")) or None
    if not isinstance(stats, dict) or not stats.get("port"):
        return None
    address = stats.get("address") or "0.0.0.0"
    if address == "0.0.0.0":
        address = discovery_registration.host_ip(host["discovery"]["register"], grains)
    return {"address": address, "port": int(stats["port"])}


def _config_age(host, now):
    try:
        return round(now - os.stat(host["config_file"]).st_mtime, 1)
    except OSError:
        return None


def _part(func, *args):
    try:
        return func(*args)
    except (EnvoyFormulaError, OSError, ValueError, KeyError, TypeError) as exc:
        return {"error": f"{exc.__class__.__name__}: {exc}"[:300]}


def collect(host, pillar, node_id, grains, now=None):
    """The summary for the mine. ``pillar``: this minion's pillar ``envoy`` (what its next
    highstate renders from, as far as the minion knows)."""
    now = now or time.time()
    full = status_report.status(host)
    report = host["report"]
    out = {
        "format": FORMAT,
        "minion": node_id,
        "collected_at": now,
        "interval_s": report["interval_s"] + report["splay"],
        "roles": host["roles"],
        "status": _status(full),
        "config_age_s": _config_age(host, now),
        "rejected": _part(_rejected, host, full),
        "manifests": _part(manifests, host),
        "catalogue": sorted(pillar.get("services") or {}),
        "discovery": _part(_discovery, host, grains),
        "drift": _part(config_drift.check, host, pillar, node_id, now) if report["drift"] else None,
        "traffic": _part(traffic_sample.sample, host, full.get("live"), now),
        "scrape": _part(scrape_target, pillar, host, grains),
    }
    if full.get("certificates") is not None:  # from envoy.status when the host has mTLS identities
        out["certificates"] = full["certificates"]
    return out
