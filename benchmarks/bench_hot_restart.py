"""
Hot restart: how long until the new epoch is LIVE, how many requests fail, and what happens to
latency, with the real envoy under the real restarter (tests/helpers/envoy_host.py layout).

Baseline for time-to-LIVE: Envoy's own cold start (epoch 0, process start to admin /ready 200),
measured in the same run. Hot restart is timed three ways: the restarter alone (SIGHUP to the new
epoch LIVE, seen by an independent admin poller), the module call (``envoy.hot_restart`` in-process
through Salt's Caller) and ``salt-call state.apply`` of a config change (process start included).

Load: ``wrk`` when installed (keep-alive, 2 threads), else tests/helpers/load.py's LoadRunner. Failed
requests across 10 hot restarts, and p99 during restarts against a steady run of the same length.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.helpers.envoy_host import (
    UpstreamApp,
    envoy_config,
    kill_pids,
    make_release,
    read_status,
    switch_current,
    write_config,
)
from tests.helpers.net import free_port, http_get, wait_for

REPO = Path(__file__).resolve().parents[1]
SLS_DIR = REPO / "tests" / "integration" / "sls"
RESTARTS = 10
COLD_RUNS = 7
CONNECTIONS = 32
DRAIN_S, PARENT_SHUTDOWN_S = 2, 3


def envoy_binary():
    from envoy_bundle.builder import default_envoy_path

    return str(default_envoy_path())


def poll_live(admin_port, epoch=None, timeout=30.0, interval=0.005):
    """Seconds until admin reports LIVE (for ``epoch`` if given), polling fast."""
    started = time.monotonic()
    deadline = started + timeout
    url = f"http://127.0.0.1:{admin_port}/server_info"
    while time.monotonic() < deadline:
        try:
            status, body = http_get(url, timeout=0.5)
            if status == 200:
                info = json.loads(body)
                if info["state"] == "LIVE" and (epoch is None
                                                or int(info["command_line_options"]["restart_epoch"]) == epoch):
                    return time.monotonic() - started
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"envoy not LIVE on admin port {admin_port} after {timeout}s")


def cold_start_seconds(binary, work, app_port):
    """Envoy's own start: process spawn to /ready (the baseline), median of COLD_RUNS."""
    times = []
    for n in range(COLD_RUNS):
        admin = free_port()
        config = work / f"cold-{n}.yaml"
        write_config(config, envoy_config(admin, free_port(), app_port, marker=f"cold{n}"))
        with open(work / "cold.log", "ab") as log:
            started = time.monotonic()
            proc = subprocess.Popen([binary, "-c", str(config), "--base-id", str(400 + n), "--concurrency", "2"],
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                while True:
                    try:
                        if http_get(f"http://127.0.0.1:{admin}/ready", timeout=0.5)[0] == 200:
                            break
                    except OSError:
                        pass
                    if time.monotonic() - started > 30:
                        raise TimeoutError("cold start did not get LIVE")
                    time.sleep(0.005)
                times.append(time.monotonic() - started)
            finally:
                proc.terminate()
                proc.wait(10)
                with contextlib.suppress(OSError):
                    os.unlink(f"/dev/shm/envoy_shared_memory_{(400 + n) * 10}")
    return statistics.median(times)


class Bench:
    def __init__(self, work):
        self.work = work
        self.binary = envoy_binary()
        self.app = UpstreamApp(name="bench").start()
        self.admin_port = free_port()
        self.listener_port = free_port()
        self.install_dir = work / "opt"
        self.config_file = work / "etc" / "envoy.yaml"
        self.run_dir = work / "run"
        make_release(self.install_dir, "r1", self.binary)
        switch_current(self.install_dir, "r1")
        self.restarter = None
        self.marker = 0

    def write_config(self):
        self.marker += 1
        write_config(self.config_file, envoy_config(self.admin_port, self.listener_port, self.app.port,
                                                    marker=f"b{self.marker}"))

    def start_restarter(self):
        self.write_config()
        command = [sys.executable, str(self.install_dir / "current" / "bin" / "envoy-restarter"),
                   "--install-dir", str(self.install_dir), "--config", str(self.config_file),
                   "--base-id", "377", "--admin-port", str(self.admin_port), "--run-dir", str(self.run_dir),
                   "--log-dir", str(self.work / "log"), "--drain-time-s", str(DRAIN_S),
                   "--parent-shutdown-time-s", str(PARENT_SHUTDOWN_S), "--envoy-arg=--concurrency=2"]
        self.restarter = subprocess.Popen(command, stdout=open(self.work / "restarter.log", "ab"),  # noqa: SIM115
                                          stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: (read_status(self.run_dir) or {}).get("live_epoch") == 0, timeout=30, what="epoch 0")

    def status(self):
        return read_status(self.run_dir) or {}

    def wait_single_epoch(self):
        """The parent finished draining: the next HUP is not deferred."""
        wait_for(lambda: len(self.status().get("epochs", [])) == 1, timeout=PARENT_SHUTDOWN_S + 20,
                 interval=0.05, what="the parent gone")

    def hup_to_live(self):
        self.wait_single_epoch()
        epoch = self.status()["live_epoch"] + 1
        self.write_config()
        started = time.monotonic()
        os.kill(self.restarter.pid, signal.SIGHUP)
        poll_live(self.admin_port, epoch)
        return time.monotonic() - started

    def stop(self):
        status = self.status()
        if self.restarter and self.restarter.poll() is None:
            self.restarter.terminate()
            try:
                self.restarter.wait(20)
            except subprocess.TimeoutExpired:
                self.restarter.kill()
        kill_pids([e["pid"] for e in status.get("epochs", [])])
        self.app.stop()


# -- load --


def parse_wrk(text):
    """requests, errors and latency percentiles (ms) from ``wrk --latency`` output."""
    def ms(value, unit):
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    percentiles = {int(p): ms(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return {"requests": requests, "errors": errors, "p50": percentiles.get(50), "p99": percentiles.get(99),
            "rps": rps}


class Load:
    """wrk (preferred) or the LoadRunner for a fixed duration, in a thread."""

    def __init__(self, url, seconds):
        self.url, self.seconds = url, seconds
        self.result = None
        self.tool = "wrk" if shutil.which("wrk") else "LoadRunner"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        if self.tool == "wrk":
            out = subprocess.run(["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{self.seconds}s", "--latency",
                                  "--timeout", "10s", self.url], capture_output=True, text=True,
                                 timeout=self.seconds + 60)
            self.result = parse_wrk(out.stdout)
            self.result["raw"] = out.stdout
        else:
            from tests.helpers.load import LoadRunner

            with LoadRunner(self.url, connections=CONNECTIONS, max_seconds=self.seconds + 5) as load:
                time.sleep(self.seconds)
            r = load.result
            self.result = {"requests": r.total, "errors": r.failed, "p50": r.percentile(50), "p99": r.percentile(99),
                           "rps": r.rps}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join(self.seconds + 90)


def restarts_under_load(bench):
    """10 hot restarts back to back (each waits for the parent to finish) under load."""
    url = f"http://127.0.0.1:{bench.listener_port}/bench"
    bench.wait_single_epoch()
    seconds = int(RESTARTS * (PARENT_SHUTDOWN_S + 1.0)) + 2
    with Load(url, seconds) as steady:
        pass
    with Load(url, seconds) as during:
        time.sleep(1)
        done = 0
        while done < RESTARTS and during._thread.is_alive():
            bench.hup_to_live()
            done += 1
    return steady.result, during.result, done, during.tool


# -- through Salt --


def salt_timings(work, binary, app_port):
    """envoy.hot_restart in-process (Salt's Caller) and salt-call state.apply, each to LIVE."""
    from tests.helpers.sandbox import SandboxHost

    host = SandboxHost(work / "salt-host", minion_id="bench-hot-restart", base_id=378, extra_file_roots=[SLS_DIR])
    paths = host.settings
    make_release(paths["install_dir"], "r1", binary)
    switch_current(paths["install_dir"], "r1")
    listener = free_port()
    timings = {"drain_time_s": DRAIN_S, "parent_shutdown_time_s": PARENT_SHUTDOWN_S, "live_timeout_s": 20,
               "stop_timeout_s": 5, "concurrency": 2}

    def set_config(marker):
        text = envoy_config(host.admin_port, listener, app_port, marker=marker)
        host.set_pillar({"envoy": {"restart": timings}, "envoy_restart_test": {"config": text}})
        return text

    write_config(paths["config_file"], set_config("s0"))
    host.sync()
    try:
        host.apply("envoy_restart_test")
        apply_times, module_times, inner_times, ping_times = [], [], [], []
        caller = caller_for(host)
        for n in range(1, 6):
            wait_for(lambda: len((read_status(paths["run_dir"]) or {}).get("epochs", [])) == 1,
                     timeout=PARENT_SHUTDOWN_S + 20, interval=0.05, what="the parent gone")
            set_config(f"s{n}")
            started = time.time()
            out = host.apply("envoy_restart_test")
            running = out["envoy-restart-test-running"]
            assert running["changes"].get("restart") == "hot", running
            live_at = read_status(paths["run_dir"])["last_restart"]["finished_at"]
            apply_times.append(live_at - started)

            wait_for(lambda: len((read_status(paths["run_dir"]) or {}).get("epochs", [])) == 1,
                     timeout=PARENT_SHUTDOWN_S + 20, interval=0.05, what="the parent gone")
            started = time.monotonic()
            ret = caller.cmd("envoy.hot_restart")
            module_times.append(time.monotonic() - started)
            assert ret["result"], ret
            inner_times.append(ret["duration_s"])
            started = time.monotonic()
            caller.cmd("test.ping")
            ping_times.append(time.monotonic() - started)
        return {"apply": statistics.median(apply_times), "module": statistics.median(module_times),
                "inner": statistics.median(inner_times), "ping": statistics.median(ping_times)}
    finally:
        host.salt_call("envoy.stop", check=False, timeout=60)
        status = read_status(paths["run_dir"]) or {}
        kill_pids([status.get("restarter_pid"), *[e["pid"] for e in status.get("epochs", [])]])


def caller_for(host):
    import salt.client
    import salt.config

    opts = salt.config.minion_config(str(host.conf_dir / "minion"))
    opts["file_client"] = "local"
    caller = salt.client.Caller(mopts=opts)
    caller.cmd("saltutil.sync_all")
    return caller


def run():
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-hot-restart-"))
    bench = Bench(work)
    try:
        cold = cold_start_seconds(bench.binary, work, bench.app.port)
        bench.start_restarter()
        hup = statistics.median(bench.hup_to_live() for _ in range(5))
        steady, during, done, tool = restarts_under_load(bench)
    finally:
        bench.stop()
    app = UpstreamApp(name="bench-salt").start()
    try:
        salt = salt_timings(work, bench.binary, app.port)
    finally:
        app.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = {"baseline": cold, "goal": "<= 1.5"}
    rows.append({"metric": "envoy cold start to LIVE (baseline)", "value": cold, "unit": "s"})
    rows.append({"metric": "SIGHUP to new epoch LIVE (restarter)", "value": hup, "unit": "s", **base,
                 "ratio": hup / cold})
    rows.append({"metric": "envoy.hot_restart: SIGHUP sent to outcome read (module's own timing)",
                 "value": salt["inner"], "unit": "s", **base, "ratio": salt["inner"] / cold})
    rows.append({"metric": "envoy.hot_restart call to LIVE (Salt Caller, in-process)", "value": salt["module"],
                 "unit": "s", **base, "ratio": salt["module"] / cold,
                 "note": f"a Caller test.ping alone takes {salt['ping']:.3f}s"})
    rows.append({"metric": "salt-call state.apply start to LIVE", "value": salt["apply"], "unit": "s", **base,
                 "ratio": salt["apply"] / cold, "note": "includes salt-call process start, sync and render"})
    rows.append({"metric": f"failed requests across {done} hot restarts", "value": during["errors"],
                 "unit": "requests", "goal": "0",
                 "note": f"{tool}, {CONNECTIONS} keep-alive conns, {during['requests']} requests"})
    rows.append({"metric": "request rate during hot restarts", "value": during["rps"], "unit": "req/s",
                 "goal": ">= 2000", "note": tool})
    rows.append({"metric": "p99 latency during hot restarts", "value": during["p99"], "unit": "ms",
                 "baseline": steady["p99"], "ratio": during["p99"] / steady["p99"], "goal": "<= 2",
                 "note": f"steady run: {steady['rps']:.0f} req/s, {steady['errors']} failed"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
