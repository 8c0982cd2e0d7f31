"""
The discovery service as a daemon on the hosts pillar ``envoy:discovery:server:hosts`` names:
started detached (its own session, output to its log), found by its pid file and command line,
restarted when its settings change, healthy when ``/healthcheck`` answers.
"""

import contextlib
import os
import shutil
import time

from . import local_http, processes
from .errors import EnvoyFormulaError

PROCESS_MARK = "envoy-discovery"


def paths(host):
    return {"pidfile": os.path.join(host["run_dir"], "envoy-discovery.pid"),
            "log_file": os.path.join(host["log_dir"], "envoy-discovery.log")}


# Server options pillar sets only when it sets them: left out, the service's own defaults hold.
OPTIONAL = (("sweep_grace", "--sweep-grace"), ("sweep_interval", "--sweep-interval"))


def command(host):
    """The daemon's argv from ``envoy:discovery:server`` (and ``auth``). Never a secret: the keys
    are in ``keys_file``, which the daemon reads (and re-reads when it changes) itself."""
    server, auth = host["discovery"]["server"], host["discovery"]["auth"]
    argv = [str(server["command"]), "--listen", str(server["listen"]), "--ttl", str(server["ttl"]),
            "--env", str(server["env"]), "--pidfile", paths(host)["pidfile"],
            "--workers", str(server["workers"]), "--sweep-guard", str(server["sweep_guard"]),
            "--sweep-guard-min", str(server["sweep_guard_min"])]
    for key, option in OPTIONAL:
        if server.get(key) is not None:
            argv += [option, str(server[key])]
    if server.get("redis"):
        argv += ["--redis", str(server["redis"])]
    else:
        argv += ["--sqlite", server["sqlite"]]
    if auth["mode"] != "off":
        argv += ["--auth", auth["mode"], "--auth-keys-file", server["keys_file"]]
        if not auth["peer_check"]:
            argv.append("--no-auth-peer-check")
    return argv


def _options(argv):
    """The argv from its first option on: a console script runs as `python /path/envoy-discovery ...`."""
    return argv[next((i for i, p in enumerate(argv) if p.startswith("--")), len(argv)):]


def running_pid(host):
    return processes.running_pid(paths(host)["pidfile"], lambda argv: any(PROCESS_MARK in p for p in argv))


def status(host):
    """``command``: what pillar wants; ``running_command``: what the running daemon was started with."""
    argv = command(host)
    pid = running_pid(host)
    running = processes.cmdline(pid) if pid is not None else None
    current = running is not None and _options(running) == argv[1:]
    return {"running": pid is not None, "pid": pid, "current": current, "command": argv,
            "running_command": running, **paths(host)}


def stop(host, timeout=10):
    pid = running_pid(host)
    if pid is None:
        return {"stopped": False, "pid": None}
    processes.terminate([pid], float(timeout))
    with contextlib.suppress(FileNotFoundError):
        os.remove(paths(host)["pidfile"])
    return {"stopped": True, "pid": pid}


def health_url(listen):
    address, _, port = str(listen).rpartition(":")
    address = address.strip("[]")
    address = "127.0.0.1" if address in ("", "0.0.0.0", "::") else address
    return f"http://{address}:{port}/healthcheck"


def start(host, timeout=20):
    """Start it (restarting one with other settings) and wait for its health check."""
    now = status(host)
    if now["running"] and now["current"]:
        return {"started": False, "pid": now["pid"]}
    if now["running"]:
        stop(host)
    server = host["discovery"]["server"]
    for path in (now["pidfile"], now["log_file"]):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if not server.get("redis"):
        os.makedirs(os.path.dirname(server["sqlite"]), exist_ok=True)
    argv = list(now["command"])
    executable = shutil.which(argv[0])
    if not executable:
        raise EnvoyFormulaError(f"cannot start the discovery service: {argv[0]} not found; "
                                "set envoy:discovery:server:command")
    argv[0] = executable
    processes.spawn_daemon(argv, now["log_file"])
    url = health_url(server["listen"])
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if local_http.answers_ok(url):
            return {"started": True, "pid": running_pid(host)}
        time.sleep(0.2)
    raise EnvoyFormulaError(f"the discovery service did not become healthy on {server['listen']} within "
                            f"{timeout}s; see {now['log_file']}: "
                            + processes.tail(now["log_file"], 500).strip())
