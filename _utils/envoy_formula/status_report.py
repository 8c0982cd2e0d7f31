"""
``envoy.status``: what runs on this host, from the restarter's status file, the admin API, the
files on disk and the last scheduled highstate. The first key, ``summary``, is one line an
operator scans across ``salt '*' envoy.status``; times are ISO 8601 UTC.
"""

import datetime

import yaml

from . import (
    admin_api,
    atomic_files,
    config_files,
    highstate_record,
    lifecycle,
    mesh_identity,
    restarter_status,
    supervisor,
    xds_acceptance,
)
from .errors import EnvoyFormulaError

iso = restarter_status.iso


def _epoch(entry):
    return {"epoch": entry.get("epoch"), "pid": entry.get("pid"), "state": entry.get("state"),
            "started_at": iso(entry.get("started_at")), "bundle_id": entry.get("bundle_id"),
            "config_sha256": entry.get("config_sha256")}


def _last_restart(recorded):
    last = dict(recorded.get("last_restart") or {})
    if not last:
        return None
    last.pop("log_tail", None)
    last["started_at"], last["finished_at"] = iso(last.get("started_at")), iso(last.get("finished_at"))
    return last


def _highstate(host):
    last = highstate_record.last(host)
    if last:
        last = {**last, "started_at": iso(last.get("started_at")), "finished_at": iso(last.get("finished_at"))}
    return last


def _resources(host, admin_up):
    """Files mode: each xDS subscription's version in its file and the one Envoy runs (None when
    the host runs a static config)."""
    bootstrap = config_files.read(host["config_dir"], config_files.BOOTSTRAP) or ""
    if "path_config_source" not in bootstrap:
        return None
    files = config_files.on_disk(host["config_dir"])
    generation = next((part.split("/", 1)[0] for part in bootstrap.split("/xds/")[1:]), None)
    running = {}
    if admin_up:
        try:
            running = xds_acceptance.Watcher(host["admin_port"]).stats_text()
        except Exception:  # noqa: BLE001 - status must answer whatever the admin API does
            running = {}
    out = {}
    for rel, text in sorted(files.items()):
        parts = rel.split("/")
        if not config_files.is_xds(rel) or parts[1] != generation:
            continue
        kind = parts[2]
        name = parts[3] if kind == "rds" else None
        key = f"rds {name}" if name else kind
        try:
            version = (yaml.safe_load(text) or {}).get("version_info")
        except yaml.YAMLError:
            version = None
        prefix = xds_acceptance.stat_prefix(kind, name)
        out[key] = {"file": version, "running": running.get(f"{prefix}.version_text"),
                    "rejected": int(running.get(f"{prefix}.update_rejected") or 0)}
    return out


def _queued(recorded):
    """A hot restart waiting for an earlier one's parent to drain, said with when it will start."""
    if not recorded.get("pending_hup"):
        return None
    draining = next((e for e in recorded.get("epochs", []) if e.get("state") == "draining"), None)
    if not draining:
        return "hot restart queued"
    return (f"hot restart queued: starts once epoch {draining.get('epoch')} has drained "
            f"(by {iso(draining.get('drain_ends_at'))})")


def _certificates(host, admin_up):
    """Mesh TLS certificates (mesh_identity.certificates); an error says why they cannot be read."""
    try:
        return mesh_identity.certificates(host, admin_up)
    except EnvoyFormulaError as exc:
        return {"earliest_expiry": None, "identities": {}, "error": str(exc),
                "renew_days_remaining": host["mesh_tls"]["renew_days_remaining"]}


def _certificate_words(certificates):
    """The summary's part on certificates: only what needs an operator (not served, missing, or
    past the renewal threshold, which means highstate has not renewed them)."""
    if not certificates:
        return None
    if certificates.get("error"):
        return f"certificates: {certificates['error']}"
    unserved = sorted(name for name, c in certificates["identities"].items() if c.get("served") is False)
    missing = sorted(name for name, c in certificates["identities"].items() if c.get("not_after") is None)
    words = []
    if missing:
        words.append(f"certificate missing: {', '.join(missing)}")
    if unserved:
        words.append(f"certificate on disk NOT served: {', '.join(unserved)}")
    earliest = certificates.get("earliest_expiry")
    if earliest:
        left = datetime.datetime.fromisoformat(earliest.replace("Z", "+00:00")) - datetime.datetime.now(datetime.timezone.utc)
        if left < datetime.timedelta(days=certificates["renew_days_remaining"]):
            words.append(f"certificate expires {earliest} (renewal overdue)")
    return ", ".join(words) or None


def summary(out):
    """One line: LIVE or not, epoch, bundle, whether Envoy runs the config on disk, the last restart
    and the last scheduled highstate."""
    parts = [out["state"] if out["running"] else "STOPPED"]
    if out["epoch"] is not None:
        parts.append(f"epoch {out['epoch']}")
    bundle = out["bundle"]
    if bundle["running"] and bundle["running"] != bundle["current"]:
        parts.append(f"bundle {bundle['running']} (current {bundle['current']}: restart pending)")
    else:
        parts.append(f"bundle {bundle['current'] or 'none'}")
    config = out["config_sha256"]
    if out["running"]:
        resources = out.get("resources") or {}
        behind = sorted(key for key, versions in resources.items() if versions["file"] != versions["running"])
        if config["file"] != config["running"]:
            parts.append("config on disk NOT running (restart pending or failed)")
        elif behind:
            parts.append(f"xDS files NOT applied: {', '.join(behind)}")
        else:
            parts.append("config applied")
    last = out["last_restart"]
    if last:
        parts.append(f"last restart {last.get('kind')} {last.get('outcome')} at {last.get('finished_at') or last.get('started_at')}")
    if out["restart_queued"]:
        parts.append(out["restart_queued"])
    if out["hot_restart_blocked"]:
        parts.append("hot restart blocked: next change takes a full restart")
    certificates = _certificate_words(out.get("certificates"))
    if certificates:
        parts.append(certificates)
    highstate = out["highstate"]
    if highstate is None:
        parts.append("no scheduled highstate recorded")
    elif highstate["result"]:
        parts.append(f"highstate ok at {highstate['finished_at']}")
    else:
        first = (highstate.get("failed") or [{}])[0]
        parts.append(f"highstate FAILED at {highstate['finished_at']} ({highstate.get('failed_count', 1)} states; "
                     f"{first.get('id')}: {first.get('comment', '')[:120]})")
    return ", ".join(parts)


def status(host):
    recorded = restarter_status.read(host["run_dir"])
    pid = supervisor.restarter_pid(host)
    info = admin_api.Admin(host["admin_port"]).server_info() if pid else {}
    out = {
        "summary": None,
        "running": pid is not None,
        "live": info.get("state") == "LIVE",
        "state": info.get("state") or ("admin unreachable" if pid else "stopped"),
        "supervisor": host["supervisor"],
        "restarter_pid": pid,
        "epoch": recorded.get("live_epoch") if pid else None,
        "live_pid": recorded.get("live_pid") if pid else None,
        "epochs": [_epoch(e) for e in recorded.get("epochs", [])] if pid else [],
        "envoy_version": info.get("version"),
        "hot_restart_version": recorded.get("hot_restart_version"),
        "bundle": {"current": lifecycle.current_bundle_id(host),
                   "running": recorded.get("bundle_id") if pid else None},
        "config_sha256": {"file": atomic_files.sha256_or_none(host["config_file"]),
                          "running": recorded.get("config_sha256") if pid else None},
        "uptime_s": {"current_epoch": admin_api.seconds(info.get("uptime_current_epoch", "")),
                     "all_epochs": admin_api.seconds(info.get("uptime_all_epochs", ""))},
        "restart_seq": recorded.get("restart_seq"),
        "last_restart": _last_restart(recorded),
        "hot_restart_blocked": recorded.get("hot_restart_blocked"),
        "crashes": recorded.get("crashes"),
        "highstate": _highstate(host),
        "resources": _resources(host, info.get("state") == "LIVE"),
        "restart_queued": _queued(recorded) if pid else None,
        "certificates": _certificates(host, info.get("state") == "LIVE"),
    }
    out["summary"] = summary(out)
    return out
