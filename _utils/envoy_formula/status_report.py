"""
``envoy.status``: what runs on this host, from the restarter's status file, the admin API, the
files on disk and the last scheduled highstate. The first key, ``summary``, is one line an
operator scans across ``salt '*' envoy.status``; times are ISO 8601 UTC.
"""

import datetime

from . import admin_api, atomic_files, highstate_record, lifecycle, restarter_status, supervisor


def iso(seconds):
    if seconds in (None, ""):
        return None
    return datetime.datetime.fromtimestamp(float(seconds), tz=datetime.timezone.utc).isoformat(timespec="seconds")


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
        parts.append("config applied" if config["file"] == config["running"] else
                     "config on disk NOT running (restart pending or failed)")
    last = out["last_restart"]
    if last:
        parts.append(f"last restart {last.get('kind')} {last.get('outcome')} at {last.get('finished_at') or last.get('started_at')}")
    if out["hot_restart_blocked"]:
        parts.append("hot restart blocked: next change takes a full restart")
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
    }
    out["summary"] = summary(out)
    return out
