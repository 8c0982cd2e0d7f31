"""
The restarter with the real envoy, driven by signals as systemd or the formula would: hot restarts
under load, a new epoch that cannot start, SIGHUP while initializing, kill -9 of the live envoy,
SIGTERM, SIGUSR1, and a second restarter for the same run dir.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.envoy_host import (
    UpstreamApp,
    envoy_config,
    kill_pids,
    make_release,
    pid_alive,
    read_status,
    switch_current,
    write_config,
)
from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, http_get, wait_for

BASE_ID = 223


class RestarterHost:
    """An install dir, a config and the restarter as a process of its own (its own session)."""

    def __init__(self, base, envoy_bin, app, base_id=BASE_ID):
        self.base = Path(base)
        self.install_dir = self.base / "opt"
        self.config_file = self.base / "etc" / "envoy.yaml"
        self.run_dir = self.base / "run"
        self.log_dir = self.base / "log"
        self.admin_port = free_port()
        self.listener_port = free_port()
        self.app = app
        self.base_id = base_id
        self.live_timeout_s = 15
        self.proc = None
        make_release(self.install_dir, "r1", envoy_bin)
        switch_current(self.install_dir, "r1")

    def write_config(self, marker, **kwargs):
        write_config(self.config_file, envoy_config(self.admin_port, self.listener_port, self.app.port,
                                                    marker=marker, **kwargs))

    def command(self):
        return [sys.executable, str(self.install_dir / "current" / "bin" / "envoy-restarter"),
                "--install-dir", str(self.install_dir), "--config", str(self.config_file),
                "--base-id", str(self.base_id), "--admin-port", str(self.admin_port),
                "--run-dir", str(self.run_dir), "--log-dir", str(self.log_dir),
                "--drain-time-s", "2", "--parent-shutdown-time-s", "3",
                "--live-timeout-s", str(self.live_timeout_s), "--stop-timeout-s", "5", "--envoy-arg=--concurrency=1"]

    def start(self):
        self.log = open(self.base / "restarter.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.wait_live()
        return self

    def status(self):
        return read_status(self.run_dir) or {}

    def wait(self, predicate, timeout=30, what="restarter status"):
        return wait_for(lambda: predicate(self.status()), timeout=timeout, interval=0.05, what=what)

    def wait_live(self, timeout=30):
        return self.wait(lambda s: s.get("live_epoch") is not None and s.get("restarter_pid") == self.proc.pid,
                         timeout=timeout, what="a LIVE epoch")

    def hup_and_wait(self, timeout=40):
        """SIGHUP, then the outcome of the attempt that covers it (as envoy.hot_restart does)."""
        before = self.status().get("hups", 0)
        self.proc.send_signal(signal.SIGHUP)
        hup = self.wait(lambda s: s.get("hups", 0) > before and s["hups"], what="HUP counted")
        return self.wait(lambda s: (s.get("last_restart") or {}).get("hup", 0) >= hup
                         and s["last_restart"]["outcome"] != "pending" and s["last_restart"],
                         timeout=timeout, what="hot restart outcome")

    def serves(self):
        return http_get(f"http://127.0.0.1:{self.listener_port}/x", timeout=3)[0] == 200

    def stop(self):
        status = self.status()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_pids([e["pid"] for e in status.get("epochs", [])])
        self.log.close()


@pytest.fixture(scope="module")
def app():
    app = UpstreamApp(name="restarter-app").start()
    yield app
    app.stop()


@pytest.fixture
def restarter(tmp_path, envoy_bin, app):
    host = RestarterHost(tmp_path, envoy_bin, app)
    host.write_config("v0")
    host.start()
    yield host
    host.stop()


def test_ten_hot_restarts_under_load_lose_no_request(restarter):
    first_pid = restarter.status()["live_pid"]
    url = f"http://127.0.0.1:{restarter.listener_port}/load"
    with LoadRunner(url, connections=24, max_seconds=180) as load:
        time.sleep(1)
        for n in range(1, 11):
            restarter.write_config(f"v{n}")
            outcome = restarter.hup_and_wait()
            assert outcome["outcome"] == "success", outcome
            assert outcome["epoch"] == n
        time.sleep(1)
    result = load.result
    assert result.failed == 0, result.errors[:5]
    assert result.ok > 1000
    status = restarter.status()
    assert status["live_epoch"] == 10 and status["restart_seq"] == 11
    assert not pid_alive(first_pid)


def test_new_epoch_that_cannot_start_leaves_the_old_one_serving(restarter):
    live_pid = restarter.status()["live_pid"]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        restarter.write_config("bad", extra_listener_ports=[holder.getsockname()[1]])
        outcome = restarter.hup_and_wait()
    assert outcome["outcome"] == "failed"
    assert outcome["exit_code"] == 1
    assert "cannot bind" in outcome["error"]
    assert "Address already in use" in outcome["log_tail"]
    status = restarter.status()
    assert status["live_pid"] == live_pid and pid_alive(live_pid)
    assert [e["pid"] for e in status["epochs"]] == [live_pid]
    assert restarter.serves()
    # Envoy never clears its "initializing" flag after that: a further HUP is refused, nothing starts.
    assert "full restart" in status["hot_restart_blocked"]
    restarter.write_config("good-again")
    refused = restarter.hup_and_wait()
    assert refused["outcome"] == "refused"
    assert restarter.status()["live_pid"] == live_pid
    assert restarter.serves()


def test_new_epoch_not_live_in_time_is_stopped_and_the_old_one_serves(tmp_path, envoy_bin, app):
    host = RestarterHost(tmp_path, envoy_bin, app, base_id=BASE_ID + 2)
    host.live_timeout_s = 3
    host.write_config("fast")
    host.start()
    try:
        live_pid = host.status()["live_pid"]
        host.write_config("slow", init_delay_s=30)  # would stay INITIALIZING for 30 s
        outcome = host.hup_and_wait()
        assert outcome["outcome"] == "failed"
        assert "not LIVE after 3s" in outcome["error"]
        status = host.status()
        assert [e["pid"] for e in status["epochs"]] == [live_pid]  # the hung child was stopped
        assert pid_alive(live_pid) and host.serves()
        assert status["crashes"] == 0 and status["hot_restart_blocked"]
        time.sleep(1)
        assert pid_alive(live_pid) and host.serves()  # and not taken down with the child
    finally:
        host.stop()


def test_sighup_while_initializing_is_deferred(tmp_path, envoy_bin, app):
    host = RestarterHost(tmp_path, envoy_bin, app, base_id=BASE_ID + 1)
    host.write_config("slow", init_delay_s=4)
    host.log = open(tmp_path / "restarter.log", "ab")  # noqa: SIM115 (closed in stop)
    host.proc = subprocess.Popen(host.command(), stdout=host.log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        starting = host.wait(lambda s: s.get("epochs") and s["epochs"][0]["state"] == "starting" and s,
                             what="epoch 0 starting")
        first_pid = starting["epochs"][0]["pid"]
        host.proc.send_signal(signal.SIGHUP)
        host.proc.send_signal(signal.SIGHUP)
        deferred = host.wait(lambda s: s.get("pending_hup") and s, what="the HUP deferred")
        assert [e["pid"] for e in deferred["epochs"]] == [first_pid]
        assert deferred["live_epoch"] is None
        # Epoch 0 gets LIVE, then one hot restart covers both HUPs; nothing died on the way.
        final = host.wait(lambda s: s.get("live_epoch") == 1 and not s["pending_hup"] and s, timeout=40,
                          what="epoch 1 LIVE")
        assert final["last_restart"]["outcome"] == "success"
        assert final["restart_seq"] == 2  # epoch 0, then one hot restart
        assert final["crashes"] == 0
        assert host.proc.poll() is None
        assert host.serves()
    finally:
        host.stop()


def test_kill_9_of_the_live_envoy_brings_envoy_back(restarter):
    before = restarter.status()
    os.kill(before["live_pid"], signal.SIGKILL)
    after = restarter.wait(lambda s: s.get("live_pid") not in (None, before["live_pid"]) and s, timeout=30,
                           what="a new live epoch")
    assert after["crashes"] == 1
    assert after["last_crash"]["exit_code"] == -9
    assert after["last_restart"]["kind"] == "crash" and after["live_epoch"] == 0
    assert after["restarter_pid"] == before["restarter_pid"]
    assert restarter.serves()


def test_sigusr1_is_forwarded_and_sigterm_stops_every_epoch(restarter):
    status = restarter.status()
    epoch_log = Path(status["epochs"][0]["log"])
    restarter.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "SIGUSR1" in epoch_log.read_text(), timeout=10, what="envoy logging the SIGUSR1")
    restarter.proc.send_signal(signal.SIGTERM)
    assert restarter.proc.wait(20) == 0
    assert not pid_alive(status["live_pid"])
    final = restarter.status()
    assert final["state"] == "stopped" and final["epochs"] == []
    assert not Path(f"/dev/shm/envoy_shared_memory_{restarter.base_id * 10}").exists()
    assert not (restarter.run_dir / "restarter.pid").exists()


def test_a_second_restarter_for_the_same_run_dir_refuses(restarter):
    second = subprocess.run(restarter.command(), capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert "another restarter already runs" in second.stderr
    assert restarter.status()["restarter_pid"] == restarter.proc.pid
    assert restarter.serves()
