"""
Envoy's supervisor: the bundle's restarter, run either as a systemd unit or as a detached daemon
(hosts without systemd, sandboxes, the demo). The restarter runs as the user Salt runs as (root on
real hosts) and starts each Envoy epoch as the envoy user.
"""

import os
import subprocess
import sys

from . import privileges, processes, restarter_status
from .errors import EnvoyFormulaError

SYSTEMD_UNIT = "envoy.service"
RESTARTER_LOG = "restarter.log"


def restarter_log(host):
    return os.path.join(host["log_dir"], RESTARTER_LOG)


def restarter_command(host, python=None):
    """The restarter's argv for this host (the systemd unit's ExecStart is the same)."""
    timing = host["restart"]
    command = [
        python or sys.executable, os.path.join(host["current_dir"], "bin", "envoy-restarter"),
        "--install-dir", host["install_dir"], "--config", host["config_file"],
        "--base-id", str(host["base_id"]), "--admin-port", str(host["admin_port"]),
        "--run-dir", host["run_dir"], "--log-dir", host["log_dir"],
        "--drain-time-s", str(int(timing["drain_time_s"])),
        "--parent-shutdown-time-s", str(int(timing["parent_shutdown_time_s"])),
        "--live-timeout-s", str(timing["live_timeout_s"]),
        "--stop-timeout-s", str(timing["stop_timeout_s"]),
    ]
    if host["user"] not in ("root", "", None):
        command += ["--user", host["user"], "--group", host["group"]]
    if timing["concurrency"]:
        command.append(f"--envoy-arg=--concurrency={int(timing['concurrency'])}")
    command += [f"--envoy-arg={arg}" for arg in timing["envoy_args"]]
    return command


def restarter_pid(host):
    """The running restarter's pid for this host, or None (a stale pid file is ignored)."""
    run_dir = host["run_dir"]
    return processes.running_pid(restarter_status.pid_path(run_dir),
                                 lambda argv: restarter_status.is_restarter(argv, run_dir))


def is_our_envoy(pid, host):
    """An envoy process started for this host's config and base id (never matched by name alone)."""
    argv = processes.cmdline(pid)
    if "--restart-epoch" not in argv or "-c" not in argv or "--base-id" not in argv:
        return False
    try:
        config = argv[argv.index("-c") + 1]
        base_id = argv[argv.index("--base-id") + 1]
    except IndexError:
        return False
    return config == host["config_file"] and base_id == str(host["base_id"])


def orphans(host):
    """Envoy epochs of this host that no restarter supervises (it was killed): from the status file
    and a scan of /proc for this host's exact config path and base id."""
    if restarter_pid(host):
        return []
    try:
        pids = {e.get("pid") for e in restarter_status.read(host["run_dir"]).get("epochs", [])}
    except EnvoyFormulaError:
        pids = set()
    pids.update(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    me = os.getpid()
    return sorted(p for p in pids if p and p != me and processes.alive(p) and is_our_envoy(p, host))


def _systemctl(action):
    proc = subprocess.run(["systemctl", action, SYSTEMD_UNIT], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EnvoyFormulaError(f"systemctl {action} {SYSTEMD_UNIT} failed: {proc.stderr.strip()}")


def launch(host):
    """Start the restarter (systemd unit or daemon) and wait for its pid; raises with its log's tail
    when it does not come up."""
    for path in (host["run_dir"], host["log_dir"]):
        os.makedirs(path, exist_ok=True)
    if host["supervisor"] == "systemd":
        _systemctl("start")
    else:
        processes.spawn_daemon(restarter_command(host), restarter_log(host))
    pid = processes.wait_for(lambda: restarter_pid(host), 15)
    if not pid:
        tail = processes.tail(restarter_log(host)).strip()
        raise EnvoyFormulaError(f"the envoy restarter did not start: {tail or 'no log'}")
    return pid


def shut_down(host):
    """Stop the restarter, which stops every epoch itself (TERM, then KILL after its stop timeout);
    then any epoch left without it. Returns (restarter pid or None, orphan pids stopped)."""
    pid = restarter_pid(host)
    stop_timeout = host["restart"]["stop_timeout_s"]
    if host["supervisor"] == "systemd":
        _systemctl("stop")
    elif pid:
        processes.terminate([pid], stop_timeout + 10)
    left = orphans(host)
    if left:
        processes.terminate(left, stop_timeout)
    return pid, left


def envoy_uid(host):
    return privileges.envoy_uid(host["user"], host["group"])
