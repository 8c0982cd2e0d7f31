"""
Pure logic of the restarter (envoy_bundle/restarter.py): arguments, the decisions of its main loop
(defer, coalesce, queued while a parent drains, refuse when blocked, backoff), failure records. Epochs
here are stand-ins; the real envoy runs in tests/integration/test_restarter_faults.py.
"""

import json
import os

import pytest
from envoy_bundle import restarter as r


@pytest.fixture(autouse=True)
def quiet_restarter_log(monkeypatch):
    # Salt's deferred log handler (pytest-salt-factories) would flush these records to pytest's
    # closed stderr at exit.
    monkeypatch.setattr(r.log, "propagate", False)


def args(tmp_path, *extra):
    return r.parse_args([
        "--install-dir", str(tmp_path / "opt"), "--config", str(tmp_path / "envoy.yaml"),
        "--admin-port", "9901", "--run-dir", str(tmp_path / "run"), "--log-dir", str(tmp_path / "log"),
        "--base-id", "7", "--drain-time-s", "2", "--parent-shutdown-time-s", "3", *extra,
    ])


class FakeProc:
    def __init__(self, pid, returncode=None):
        self.pid = pid
        self.returncode = returncode

    def poll(self):
        return self.returncode


def fake_epoch(number, state, pid=None, returncode=None, log_path="/nonexistent"):
    epoch = r.Epoch(number, FakeProc(pid or 1000 + number, returncode), "/bin/envoy", "r1", "sha", log_path, 0,
                    "11.104")
    epoch.state = state
    return epoch


@pytest.fixture
def sup(tmp_path, monkeypatch):
    """A Restarter whose start_epoch only records what it would start."""
    restarter = r.Restarter(args(tmp_path))
    restarter.started = []

    def start_epoch(number, kind):
        restarter.started.append((number, kind))
        restarter.restart_seq += 1
        restarter.last_restart = {"seq": restarter.restart_seq, "outcome": "pending", "kind": kind, "epoch": number}
        epoch = fake_epoch(number, "starting")
        restarter.epochs.append(epoch)
        restarter.candidate = epoch
        restarter.candidate_kind = kind
        return epoch

    monkeypatch.setattr(restarter, "start_epoch", start_epoch)
    return restarter


def test_drain_time_must_be_below_parent_shutdown(tmp_path):
    with pytest.raises(SystemExit):
        r.parse_args(["--install-dir", "x", "--config", "c", "--admin-port", "1", "--run-dir", "r",
                      "--log-dir", "l", "--drain-time-s", "90", "--parent-shutdown-time-s", "60"])


def test_envoy_command_carries_epoch_base_id_and_timings(tmp_path):
    restarter = r.Restarter(args(tmp_path, "--envoy-arg=--concurrency=2", "--envoy-arg=-l", "--envoy-arg=warning"))
    command = restarter.envoy_command("/opt/envoy/releases/a/bin/envoy", 4)
    joined = " ".join(command)
    assert command[:3] == ["/opt/envoy/releases/a/bin/envoy", "-c", str(tmp_path / "envoy.yaml")]
    for expected in ("--restart-epoch 4", "--base-id 7", "--drain-time-s 2", "--parent-shutdown-time-s 3",
                     "--skip-hot-restart-on-no-parent", "--concurrency 2", "-l warning",
                     f"--admin-address-path {tmp_path}/run/admin-address.epoch-4"):
        assert expected in joined


def test_binary_is_resolved_through_current_at_each_start(tmp_path):
    restarter = r.Restarter(args(tmp_path))
    opt = tmp_path / "opt"
    for release in ("a", "b"):
        (opt / "releases" / release / "bin").mkdir(parents=True)
        (opt / "releases" / release / "bin" / "envoy").write_text("")
    (opt / "current").symlink_to("releases/a")
    assert restarter.resolve_binary() == (str(opt / "releases/a/bin/envoy"), "a")
    (opt / "current").unlink()
    (opt / "current").symlink_to("releases/b")
    assert restarter.resolve_binary() == (str(opt / "releases/b/bin/envoy"), "b")


def test_hup_while_the_first_epoch_initializes_is_deferred(sup):
    sup.maybe_cold_start()
    assert sup.started == [(0, "cold")]
    sup.pending_hup = True
    sup.maybe_hot_restart()
    assert sup.started == [(0, "cold")] and sup.pending_hup


def test_repeated_hups_coalesce_into_one_restart(sup):
    sup.live = fake_epoch(0, "live")
    sup.epochs = [sup.live]
    for _ in range(3):
        sup._on_signal(r.signal.SIGHUP, None)
    sup.handle_signals()
    assert sup.hups == 3
    sup.maybe_hot_restart()
    sup.maybe_hot_restart()
    assert sup.started == [(1, "hot")]
    assert sup.last_restart["epoch"] == 1


def test_a_hup_while_a_parent_drains_is_queued_until_it_has_drained(sup):
    """A third epoch would make Envoy end the draining grandparent and cut what it still serves:
    the HUP stays queued until the parent is gone (the formula does not wait for it)."""
    sup.live = fake_epoch(1, "live")
    sup.epochs = [fake_epoch(0, "draining"), sup.live]
    sup.pending_hup = True
    sup.maybe_hot_restart()
    assert sup.started == [] and sup.pending_hup
    sup.epochs[0].proc.returncode = 0  # the parent finished draining
    sup.forget_exited()
    sup.maybe_hot_restart()
    assert sup.started == [(2, "hot")]


def test_a_blocked_hot_restart_is_refused_without_starting_anything(sup):
    sup.live = fake_epoch(3, "live")
    sup.epochs = [sup.live]
    sup.hot_restart_blocked = "epoch 4 failed during its start"
    sup.pending_hup = True
    sup.maybe_hot_restart()
    assert sup.started == []
    assert sup.last_restart["outcome"] == "refused"
    assert "epoch 4 failed" in sup.last_restart["error"]


def test_failed_child_blocks_hot_restart_unless_it_was_a_version_mismatch(sup, tmp_path):
    for message, blocked in (("[critical] error initializing config: cannot bind", True),
                             ("[critical] Hot restart version mismatch", False)):
        log_path = tmp_path / "epoch.log"
        log_path.write_text(f"[2026][1][info] starting\n[2026][1]{message}\n[2026][1][info] exiting\n")
        sup.live = fake_epoch(0, "live")
        sup.hot_restart_blocked = None
        child = fake_epoch(1, "starting", returncode=1, log_path=str(log_path))
        sup.epochs = [sup.live, child]
        sup.candidate = child
        sup.last_restart = {"outcome": "pending", "seq": 2, "kind": "hot", "epoch": 1}
        sup.check_candidate()
        assert sup.last_restart["outcome"] == "failed"
        assert sup.last_restart["exit_code"] == 1
        assert message in sup.last_restart["error"]
        assert bool(sup.hot_restart_blocked) is blocked
        assert sup.live.state == "live" and sup.epochs == [sup.live]


def test_live_epoch_death_restarts_at_epoch_zero_with_growing_backoff(sup, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(r.time, "monotonic", lambda: clock[0])
    delays = []
    for _ in range(7):
        sup.live = fake_epoch(0, "live")
        sup.epochs = [sup.live]
        sup.live.proc.returncode = -9
        sup.reap()
        delays.append(sup.crash_restart_at - clock[0])
        started = len(sup.started)
        sup.maybe_cold_start()
        assert len(sup.started) == started  # waits out the backoff first
        clock[0] = sup.crash_restart_at
        sup.maybe_cold_start()
        assert sup.started[-1] == (0, "crash")
        sup.candidate = None
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert sup.crashes == 7
    # An epoch that stayed up for a while resets the backoff.
    sup.live = fake_epoch(0, "live")
    sup.epochs = [sup.live]
    clock[0] += r.STABLE_S + 1
    sup.live.proc.returncode = 1
    sup.reap()
    assert sup.crash_restart_at - clock[0] == r.BACKOFF_MIN_S


def test_status_is_written_atomically_and_only_on_change(tmp_path):
    restarter = r.Restarter(args(tmp_path))
    os.makedirs(tmp_path / "run")
    restarter.write_status()
    status_path = tmp_path / "run" / "status.json"
    first = json.loads(status_path.read_text())
    assert first["restarter_pid"] == os.getpid() and first["live_epoch"] is None
    mtime = status_path.stat().st_mtime_ns
    restarter.write_status()
    assert status_path.stat().st_mtime_ns == mtime
    assert os.listdir(tmp_path / "run") == ["status.json"]


def test_envoy_error_line_and_log_tail_of_one_epoch(tmp_path):
    log_path = tmp_path / "envoy.log"
    log_path.write_text("old epoch noise [critical] old\n")
    offset = log_path.stat().st_size
    with open(log_path, "a") as handle:
        handle.write("[info] a\n[critical] error initializing config: bad\n[info] exiting\n")
    tail = r.read_tail(str(log_path), offset)
    assert "old epoch" not in tail
    assert r.envoy_error_line(tail) == "[critical] error initializing config: bad"
    assert r.envoy_error_line("just a line\n") == "just a line"
    assert r.split_envoy_args(["--concurrency=2", "-l", "--x"]) == ["--concurrency", "2", "-l", "--x"]


def test_private_keys_never_reach_the_failure_record(tmp_path):
    log_path = tmp_path / "envoy.log"
    log_path.write_text("[critical] bad key: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"
                        " and more\n[critical] cut short -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE")
    tail = r.read_tail(str(log_path))
    assert "MIIEvQ" not in tail and "MHcCAQ" not in tail
    assert tail.count("<redacted private key sha256:") == 2 and "and more" in tail


def test_a_failing_tick_or_status_write_does_not_end_the_restarter(tmp_path, monkeypatch):
    restarter = r.Restarter(args(tmp_path))  # no run dir: every status write fails
    restarter.write_status()
    assert not (tmp_path / "run").exists()
    calls = []

    def broken_step():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        restarter.stopping = True

    monkeypatch.setattr(restarter, "step", broken_step)
    monkeypatch.setattr(restarter, "install_signal_handlers", lambda: setattr(restarter, "wakeup_fd", os.open(os.devnull, os.O_RDONLY)))
    monkeypatch.setattr(restarter, "sleep", lambda *_: None)
    assert restarter.run() == 0
    assert len(calls) == 2
