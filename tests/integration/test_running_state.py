"""
``envoy.running`` and its ``mod_watch`` through the real ``salt-call --local`` on a sandbox host,
with the real envoy under the real restarter (daemon supervisor). A tests-only SLS
(tests/integration/sls/envoy_restart_test) manages a static config from pillar, keeps the previous
one for rollback, and watches it with ``envoy.running``.

The tests share one host and run in order: each starts from "envoy runs, LIVE".
"""

import json
import os
import signal
import socket
import threading
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
    version_wrapper,
    write_config,
)
from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import SandboxHost

SLS_DIR = Path(__file__).resolve().parent / "sls"
SLS = "envoy_restart_test"
RUNNING = "envoy-restart-test-running"
TIMINGS = {"drain_time_s": 2, "parent_shutdown_time_s": 3, "live_timeout_s": 20, "stop_timeout_s": 5,
           "full_restart_drain_s": 1, "concurrency": 1}


class Host:
    """The sandbox host plus what the tests need to drive it."""

    def __init__(self, base, envoy_bin):
        self.envoy_bin = envoy_bin
        self.app = UpstreamApp(name="state-app").start()
        self.listener_port = free_port()
        self.sandbox = SandboxHost(base, minion_id="restart-state", base_id=211,
                                   extra_file_roots=[SLS_DIR])
        self.paths = self.sandbox.settings
        self.run_dir = self.paths["run_dir"]
        self.config_file = Path(self.paths["config_file"])
        self.install_dir = self.paths["install_dir"]
        make_release(self.install_dir, "r1", envoy_bin)
        switch_current(self.install_dir, "r1")
        self.version = 0

    def config(self, marker, extra_ports=()):
        return envoy_config(self.sandbox.admin_port, self.listener_port, self.app.port,
                            extra_listener_ports=extra_ports, marker=marker)

    def set_config(self, marker, extra_ports=()):
        text = self.config(marker, extra_ports)
        self.sandbox.set_pillar({"envoy": {"restart": TIMINGS}, SLS: {"config": text}})
        return text

    def apply(self, test=False):
        return self.sandbox.apply(SLS, test=test)

    def status(self):
        return read_status(self.run_dir)

    def serves(self):
        try:
            return http_get(f"http://127.0.0.1:{self.listener_port}/ping", timeout=3)[0] == 200
        except OSError:
            return False

    def live(self):
        status = self.status() or {}
        return status.get("live_epoch") is not None and pid_alive(status.get("restarter_pid") or 0)

    def our_envoy_pids(self):
        """Every process running envoy for this host's config (a /proc scan, exact config path)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--restart-epoch" in cmdline and str(self.config_file).encode() in cmdline \
                    and pid_alive(int(entry)):
                pids.append(int(entry))
        return sorted(pids)

    def cleanup(self):
        self.sandbox.salt_call("envoy.stop", check=False, timeout=60)
        status = self.status() or {}
        kill_pids([status.get("restarter_pid"), *[e["pid"] for e in status.get("epochs", [])],
                   *self.our_envoy_pids()])
        self.app.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory, envoy_bin):
    host = Host(tmp_path_factory.mktemp("state-host"), envoy_bin)
    try:
        write_config(host.config_file, host.set_config("v1"))
        host.sandbox.sync()
        yield host
    finally:
        host.cleanup()


def running_result(out):
    return out[RUNNING]


def test_first_run_starts_envoy_then_is_idempotent(host):
    out = host.apply()
    assert all(r["result"] for r in out.values()), out
    assert running_result(out)["changes"]["started"] is True
    assert host.serves()
    status = host.status()
    assert status["live_epoch"] == 0 and status["bundle_id"] == "r1"
    again = host.apply()
    assert all(r["result"] is True and not r["changes"] for r in again.values()), again
    assert host.status()["restart_seq"] == status["restart_seq"]


def test_test_mode_predicts_a_hot_restart_and_touches_nothing(host):
    host.apply()  # envoy runs, whatever ran before
    before = host.status()
    host.set_config("v2")
    out = host.apply(test=True)
    running = running_result(out)
    assert running["result"] is None
    assert running["changes"] == {"restart": "hot"}
    assert "hot restarted" in running["comment"]
    assert host.status()["restart_seq"] == before["restart_seq"]
    assert json.loads(host.config_file.read_text())["node"]["cluster"] != "test-v2"


def test_config_change_hot_restarts(host):
    host.apply()  # envoy runs, whatever ran before
    before = host.status()
    host.set_config("v2-applied")
    running = running_result(host.apply())
    assert running["result"] is True, running
    assert running["changes"]["restart"] == "hot"
    status = host.status()
    assert status["live_epoch"] == before["live_epoch"] + 1
    assert status["restarter_pid"] == before["restarter_pid"]
    assert status["config_sha256"] != before["config_sha256"]
    assert host.serves()


def hold_a_port():
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def test_new_listener_that_cannot_bind_is_refused_before_any_restart(host):
    host.apply()  # envoy runs, whatever ran before
    before = host.status()
    good_config = host.config_file.read_text()
    holder, held_port = hold_a_port()
    try:
        # Validates (envoy --mode validate binds nothing), but the new listener's port is taken.
        host.set_config("v3", extra_ports=[held_port])
        running = running_result(host.apply())
        assert running["result"] is False
        assert f"cannot bind 127.0.0.1:{held_port}: Address already in use" in running["comment"], running
        assert "previous config was put back" in running["comment"]
        assert running["changes"]["rolled_back"] is True
        status = host.status()
        # Envoy was never asked: same epoch and process, no restart attempted, nothing blocked.
        assert status["restart_seq"] == before["restart_seq"] and status["live_pid"] == before["live_pid"]
        assert not status["hot_restart_blocked"]
        assert host.serves()
        assert host.config_file.read_text() == good_config
    finally:
        holder.close()
    # Once the port is free, the same config hot restarts as usual, with the new listener up.
    running = running_result(host.apply())
    assert running["result"] is True and running["changes"]["restart"] == "hot", running
    assert host.status()["live_epoch"] == before["live_epoch"] + 1
    assert host.serves()
    assert http_get(f"http://127.0.0.1:{held_port}/ping", timeout=3)[0] == 200


def crashing_build(path, envoy_bin):
    """An envoy build that answers --version, --hot-restart-version and --mode validate like the
    real one, but dies when it starts for real: a bad new bundle that validation cannot catch."""
    path = Path(path)
    path.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --restart-epoch "*)\n'
        '  echo "[critical] this envoy build crashes at start (test)" >&2; exit 1;;\n'
        "esac\n"
        f'exec "{envoy_bin}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def test_new_epoch_that_cannot_start_leaves_old_serving_and_rolls_back(host, tmp_path):
    host.apply()  # envoy runs, whatever ran before
    before = host.status()
    good_config = host.config_file.read_text()
    make_release(host.install_dir, "r-crash", str(crashing_build(tmp_path / "envoy", host.envoy_bin)))
    switch_current(host.install_dir, "r-crash")
    try:
        host.set_config("v4")
        running = running_result(host.apply())
        assert running["result"] is False, running
        assert running["changes"]["restart"] == "hot" and running["changes"]["outcome"] == "failed"
        assert "crashes at start" in running["comment"] and "previous config was put back" in running["comment"]
        assert running["changes"]["rolled_back"] is True
        status = host.status()
        assert status["last_restart"]["outcome"] == "failed"
        assert status["last_restart"]["exit_code"] == 1
        assert "crashes at start" in status["last_restart"]["error"]
        assert status["live_pid"] == before["live_pid"] and pid_alive(before["live_pid"])
        assert host.serves()
        assert host.config_file.read_text() == good_config
    finally:
        switch_current(host.install_dir, "r1")


def test_a_blocked_hot_restart_takes_a_full_restart(host):
    """A HUP sent around Salt (as `systemctl reload` does) with a listener that cannot bind: the new
    epoch fails inside Envoy's hot restart, which then refuses any further hot restart of that
    process. The next change takes the full restart."""
    host.apply()  # envoy runs, whatever ran before
    before = host.status()
    holder, held_port = hold_a_port()
    try:
        write_config(host.config_file, host.config("v5", extra_ports=[held_port]))
        os.kill(before["restarter_pid"], signal.SIGHUP)

        def verdict():
            last = host.status().get("last_restart") or {}
            return last.get("hup", 0) > (before.get("hups") or 0) and last.get("outcome") in ("success", "failed")

        wait_for(verdict, timeout=30, what="the restarter's verdict on the HUP")
        status = host.status()
        assert status["last_restart"]["outcome"] == "failed" and "cannot bind" in status["last_restart"]["error"]
        assert status["hot_restart_blocked"] and status["live_pid"] == before["live_pid"]
        assert host.serves()
    finally:
        holder.close()
    host.set_config("v6")
    assert running_result(host.apply(test=True))["changes"] == {"restart": "full"}
    running = running_result(host.apply())
    assert running["result"] is True, running
    assert running["changes"]["restart"] == "full"
    status = host.status()
    assert status["live_epoch"] == 0 and not status["hot_restart_blocked"]
    assert host.serves()


def test_other_hot_restart_version_takes_a_drained_full_restart(host, tmp_path):
    host.apply()  # envoy runs, whatever ran before
    wrapper = version_wrapper(tmp_path / "envoy-other-version", host.envoy_bin, "99.999")
    make_release(host.install_dir, "r2", str(wrapper))
    switch_current(host.install_dir, "r2")
    host.set_config("v4")
    planned = running_result(host.apply(test=True))
    assert planned["changes"] == {"restart": "full"}
    assert "99.999" in planned["comment"]
    before = host.status()
    running = running_result(host.apply())
    assert running["result"] is True, running
    assert running["changes"]["restart"] == "full"
    assert running["changes"]["steps"][:2] == ["healthcheck failed", "drained 1s"]
    status = host.status()
    assert status["bundle_id"] == "r2" and status["live_epoch"] == 0
    assert status["restarter_pid"] != before["restarter_pid"]
    assert not pid_alive(before["live_pid"])
    assert host.serves()
    # Back to the real binary: its version equals the running envoy's (admin), so a hot restart.
    switch_current(host.install_dir, "r1")
    host.set_config("v5")
    running = running_result(host.apply())
    assert running["changes"]["restart"] == "hot", running


def test_killed_restarter_is_recovered_without_an_orphan(host):
    host.apply()  # envoy runs, whatever ran before
    status = host.status()
    orphan = status["live_pid"]
    # Stopped, the envoy cannot act on the SIGTERM its parent's death sends it: a real orphan.
    os.kill(orphan, signal.SIGSTOP)
    os.kill(status["restarter_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(status["restarter_pid"]), timeout=10, what="restarter gone")
    assert pid_alive(orphan)
    running = running_result(host.apply())
    assert running["result"] is True, running
    assert running["changes"]["orphans_stopped"] == [orphan]
    assert not pid_alive(orphan)
    after = host.status()
    assert host.our_envoy_pids() == [after["live_pid"]]
    assert host.serves()


def test_two_salt_calls_at_once_restart_once(host):
    host.apply()  # envoy runs (when this test runs alone)
    before = host.status()
    host.set_config("v6")
    results = {}

    def run(name):
        # Salt itself turns a second plain state run away; concurrent=True gets both through to
        # the states, so what keeps them from restarting twice is envoy.running's own lock.
        _, ret = host.sandbox.salt_call("state.apply", SLS, "concurrent=True", check=False)
        results[name] = {v["__id__"]: v for v in ret.values()}[RUNNING]

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert set(results) == {"a", "b"}
    assert all(r["result"] is True for r in results.values()), results
    restarts = [r for r in results.values() if r["changes"].get("restart")]
    assert len(restarts) == 1, results
    status = host.status()
    assert status["restart_seq"] == before["restart_seq"] + 1
    assert status["live_epoch"] == before["live_epoch"] + 1
    assert host.serves()


def test_two_reloads_triggered_by_the_same_change_restart_once(host):
    """Both runs saw the change (the race the lock is for): the one that waited finds the restart
    already done onto the same bundle and config, and does nothing."""
    host.apply()
    wait_for(lambda: len(host.status()["epochs"]) == 1, timeout=20, what="the parent gone")
    before = host.status()
    write_config(host.config_file, host.set_config("v7"))
    outs = {}

    def run(name):
        outs[name] = host.sandbox.salt_call("envoy.reload", check=False)[1]

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert sorted(out["kind"] for out in outs.values()) == ["hot", "none"], outs
    assert all(out["result"] is True for out in outs.values()), outs
    assert host.status()["restart_seq"] == before["restart_seq"] + 1
    assert host.status()["live_epoch"] == before["live_epoch"] + 1

def call(host, *args):
    return host.sandbox.salt_call(*args)[1]


def test_operations_status_stats_healthcheck_and_logs(host):
    host.apply()
    status = call(host, "envoy.status")
    recorded = host.status()
    assert status["running"] and status["live"] and status["state"] == "LIVE"
    assert status["supervisor"] == "daemon"
    assert status["restarter_pid"] == recorded["restarter_pid"]
    assert status["epoch"] == recorded["live_epoch"]
    assert status["envoy_version"].startswith("9e5580") or "1.40" in status["envoy_version"]
    assert status["bundle"] == {"current": "r1", "running": "r1"}
    assert status["config_sha256"]["file"] == status["config_sha256"]["running"]
    assert status["uptime_s"]["all_epochs"] >= status["uptime_s"]["current_epoch"] >= 0

    host.serves()
    stats = call(host, "envoy.stats", "prefix=http.ingress.downstream_rq_")
    assert stats and all(name.startswith("http.ingress.downstream_rq_") for name in stats)
    assert stats["http.ingress.downstream_rq_completed"] >= 1
    assert set(call(host, "envoy.stats", "filter=^server\\.live$")) == {"server.live"}

    health = f"http://127.0.0.1:{host.listener_port}/envoy-health"
    assert http_get(health)[0] == 200
    assert call(host, "envoy.healthcheck_fail") is True
    assert http_get(health)[0] == 503
    assert host.serves()  # only the health check answers 503: traffic still flows while draining
    assert call(host, "envoy.healthcheck_ok") is True
    assert http_get(health)[0] == 200
    assert call(host, "envoy.reopen_logs") is True


def test_module_hot_restart_reports_the_outcome(host):
    host.apply()  # envoy runs, whatever ran before
    before = host.status()
    wait_for(lambda: len(host.status()["epochs"]) == 1, timeout=20, what="the parent gone")
    out = call(host, "envoy.hot_restart")
    assert out["result"] is True and out["kind"] == "hot" and out["outcome"] == "success"
    assert out["epoch"] == before["live_epoch"] + 1
    assert host.status()["live_epoch"] == out["epoch"]


def test_drain_then_stop_and_start(host):
    host.apply()  # envoy runs, whatever ran before
    assert call(host, "envoy.drain") is True
    wait_for(lambda: not host.serves(), timeout=20, what="listeners drained")
    stopped = call(host, "envoy.stop")
    assert stopped["stopped"] is True
    assert host.our_envoy_pids() == []
    assert call(host, "envoy.status")["running"] is False
    planned = running_result(host.apply(test=True))
    assert planned["result"] is None and planned["changes"]["started"] is True
    assert "would be started" in planned["comment"]
    assert call(host, "envoy.status")["running"] is False
    started = call(host, "envoy.start")
    assert started["result"] is True and started["started"] is True
    assert host.serves()


def test_crash_looping_envoy_fails_the_state_until_it_recovers(host):
    host.apply()
    call(host, "envoy.stop")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", host.listener_port))
    holder.listen()
    try:
        first = running_result(host.apply())
        assert first["result"] is False
        assert "cannot bind" in first["comment"], first
        # The restarter keeps retrying epoch 0 with backoff: the next run waits for a retry and reports it.
        second = running_result(host.apply())
        assert second["result"] is False
        assert "no envoy epoch is LIVE" in second["comment"] and "cannot bind" in second["comment"], second
        assert host.status()["crashes"] == 0 and host.status()["live_epoch"] is None
    finally:
        holder.close()
    recovered = running_result(host.apply())
    assert recovered["result"] is True, recovered
    assert host.serves()


def test_counters_carry_over_a_hot_restart_under_load(host):
    """Operators read Envoy's counters across hot restarts: the new epoch merges the old one's at
    each stats flush (every 5 s), so with the old epoch living at least one flush after it stops
    serving (parent_shutdown_time_s - drain_time_s >= 5 s, as the formula's defaults have it) the
    counters go on from where they were, exactly what a client saw (docs/operations.md)."""
    from tests.helpers.load import LoadRunner

    stat = "http.ingress.downstream_rq_2xx"
    timings = {**TIMINGS, "drain_time_s": 1, "parent_shutdown_time_s": 6}

    def set_timed_config(marker):
        host.sandbox.set_pillar({"envoy": {"restart": timings}, SLS: {"config": host.config(marker)}})

    def counter():
        _, stats = host.sandbox.salt_call("envoy.stats", f"filter=^{stat}$")
        return stats.get(stat, 0)

    host.sandbox.salt_call("envoy.stop")
    set_timed_config("counted-before")
    assert running_result(host.apply())["result"] is True  # the restarter starts with these timings
    before, epoch = counter(), host.status()["live_epoch"]
    rate = 300
    with LoadRunner(f"http://127.0.0.1:{host.listener_port}/count", connections=4, rate=rate) as load:
        wait_for(lambda: load.result.ok > 600, timeout=20, what="load before the restart")
        set_timed_config("counted-after")
        assert running_result(host.apply())["result"] is True
        wait_for(lambda: load.result.ok > 1200, timeout=20, what="load after the restart")
    assert load.result.failed == 0, load.result.errors[:5]
    assert host.status()["live_epoch"] == epoch + 1
    wait_for(lambda: len(host.status()["epochs"]) == 1, timeout=20, what="the old epoch to exit")
    # Without the merge the new epoch would count only what it served itself (under half of it).
    assert counter() - before == load.result.ok
