"""
``envoy.schedule`` through the real ``salt-call --local`` on a sandbox host: each way a host re-runs
its own highstate (cron file, systemd timer, Salt's scheduler) is written where the sandbox root
puts it, test=True predicts without writing, a second run changes nothing, and a cron interval
that cron cannot express fails with a message naming the pillar key.
"""

from pathlib import Path

import pytest

from tests.helpers.sandbox import SandboxHost


def test_without_synced_modules_the_formula_says_what_to_do(tmp_path):
    bare = SandboxHost(tmp_path / "bare", minion_id="bare-host")
    code, out = bare.salt_call("state.apply", "envoy.schedule", check=False)
    assert code != 0
    assert "run saltutil.sync_all once" in str(out), out


@pytest.fixture
def host(tmp_path):
    sandbox = SandboxHost(tmp_path / "sched", minion_id="sched-host")
    sandbox.sync()
    return sandbox


def schedule(host, test=False, **settings):
    host.set_pillar({"envoy": {"schedule": settings}})
    return host.apply("envoy.schedule", test=test)


def test_cron_runs_a_splayed_locked_highstate(host):
    predicted = schedule(host, test=True, method="cron", minutes=10, splay=120, salt_call="/opt/salt/salt-call")
    cron = Path(host.root) / "etc/cron.d/envoy-formula-highstate"
    assert predicted["envoy-schedule-cron-file-managed"]["result"] is None and not cron.exists()
    applied = schedule(host, method="cron", minutes=10, splay=120, salt_call="/opt/salt/salt-call")
    assert applied["envoy-schedule-cron-file-managed"]["result"] is True
    line = [entry for entry in cron.read_text().splitlines() if entry.startswith("*/")][0]
    assert line.startswith("*/10 * * * * root sleep $(shuf -i 0-120 -n 1) && flock -n ")
    assert line.endswith("/opt/salt/salt-call --local envoy.scheduled_highstate >/dev/null 2>&1")
    again = schedule(host, method="cron", minutes=10, splay=120, salt_call="/opt/salt/salt-call")
    assert again["envoy-schedule-cron-file-managed"]["changes"] == {}


def test_a_cron_interval_cron_cannot_express_fails_clearly(host):
    failed = schedule(host, method="cron", minutes=90)["envoy-schedule-cron-file-managed"]
    assert failed["result"] is False
    assert "envoy:schedule:minutes=90 cannot be a cron step: use 1 to 59" in failed["comment"]
    assert not (Path(host.root) / "etc/cron.d/envoy-formula-highstate").exists()


def test_systemd_timer_is_splayed_and_oneshot(host):
    applied = schedule(host, method="systemd", minutes=30, splay=600)
    assert all(s["result"] is True for s in applied.values()), applied
    units = Path(host.root) / "etc/systemd/system"
    timer = (units / "envoy-highstate.timer").read_text()
    assert "OnUnitActiveSec=30min" in timer and "RandomizedDelaySec=600" in timer
    service = (units / "envoy-highstate.service").read_text()
    assert "Type=oneshot" in service and "--local envoy.scheduled_highstate" in service
    # A sandbox root never touches the real systemd.
    assert "envoy-schedule-highstate-timer-running" not in applied


def test_minion_scheduler_job_with_splay_and_one_at_a_time(host):
    applied = schedule(host, method="minion", minutes=15, splay=300)["envoy-schedule-highstate-present"]
    assert applied["result"] is True, applied
    # salt-call has no running minion: the job is written for the minion to load (offline).
    listed = host.salt_call("schedule.list", "return_yaml=False", "offline=True")[1]
    job = listed["envoy-highstate"]
    assert job["function"] == "envoy.scheduled_highstate" and job["minutes"] == 15
    assert job["splay"] == 300 and job["maxrunning"] == 1
    again = schedule(host, method="minion", minutes=15, splay=300)["envoy-schedule-highstate-present"]
    assert again["changes"] == {}, again
