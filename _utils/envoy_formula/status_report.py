"""``envoy.status``: what runs on this host, assembled from the restarter's status file, the admin
API and the files on disk."""

from . import admin_api, atomic_files, lifecycle, restarter_status, supervisor


def status(host):
    recorded = restarter_status.read(host["run_dir"])
    pid = supervisor.restarter_pid(host)
    info = admin_api.Admin(host["admin_port"]).server_info() if pid else {}
    last = dict(recorded.get("last_restart") or {})
    last.pop("log_tail", None)
    return {
        "supervisor": host["supervisor"],
        "running": pid is not None,
        "restarter_pid": pid,
        "live": info.get("state") == "LIVE",
        "state": info.get("state") or ("admin unreachable" if pid else "stopped"),
        "epoch": recorded.get("live_epoch") if pid else None,
        "live_pid": recorded.get("live_pid") if pid else None,
        "epochs": recorded.get("epochs", []) if pid else [],
        "envoy_version": info.get("version"),
        "hot_restart_version": recorded.get("hot_restart_version"),
        "bundle": {"current": lifecycle.current_bundle_id(host),
                   "running": recorded.get("bundle_id") if pid else None},
        "config_sha256": {"file": atomic_files.sha256_or_none(host["config_file"]),
                          "running": recorded.get("config_sha256") if pid else None},
        "uptime_s": {"current_epoch": admin_api.seconds(info.get("uptime_current_epoch", "")),
                     "all_epochs": admin_api.seconds(info.get("uptime_all_epochs", ""))},
        "restart_seq": recorded.get("restart_seq"),
        "last_restart": last or None,
        "hot_restart_blocked": recorded.get("hot_restart_blocked"),
        "crashes": recorded.get("crashes"),
    }
