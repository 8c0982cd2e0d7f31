"""A queued hot restart that nobody waited for is settled by the next run (lifecycle.settle):
a success just clears the record; a failure puts the previous config back and remembers the inputs
as refused, as a restart the state waited for does."""

import json
from pathlib import Path

import pytest
from envoy_formula import host_settings, lifecycle, rejected_inputs, restarter_status


@pytest.fixture
def host(tmp_path, monkeypatch):
    host = host_settings.resolve({"lookup": {"root": str(tmp_path)}}, euid=1000)
    for key in ("run_dir", "config_dir"):
        Path(host[key]).mkdir(parents=True)
    monkeypatch.setattr(lifecycle.admin_api.Admin, "server_info", lambda self: {"state": "LIVE"})
    config = Path(host["config_file"])
    config.write_text("new: config\n")
    (config.parent / "envoy.yaml.prev").write_text("old: config\n")
    (config.parent / ".envoy.yaml.inputs.json").write_text(json.dumps({"inputs": "digest-1", "config_sha256": "x"}))
    return host


def status(host, outcome, hup=4, pending=False):
    restarter_status.write(host["run_dir"], {"hups": hup, "pending_hup": pending, "live_epoch": 3, "epochs": [],
                                             "last_restart": {"hup": hup, "outcome": outcome, "error": "epoch 4 exited"}})


def queue(host, hup=4):
    with open(lifecycle._queued_path(host), "w") as handle:
        json.dump({"hup": hup}, handle)


def test_nothing_queued_nothing_to_settle(host):
    status(host, "failed")
    assert lifecycle.settle(host) is None
    assert open(host["config_file"]).read() == "new: config\n", "a restart someone waited for was settled then"


def test_still_queued_waits(host):
    queue(host)
    status(host, "success", hup=3, pending=True)
    assert lifecycle.settle(host) is None


def test_a_queued_restart_that_failed_is_rolled_back_and_remembered(host):
    queue(host)
    status(host, "failed")
    assert lifecycle.settle(host) == {"error": "epoch 4 exited", "rolled_back": True}
    assert open(host["config_file"]).read() == "old: config\n"
    refused = rejected_inputs.refused(host, "digest-1")
    assert refused and "epoch 4 exited" in refused["reason"]
    assert lifecycle.settle(host) is None, "settled once"


def test_a_queued_restart_that_went_well_clears_the_record(host):
    queue(host)
    status(host, "success")
    assert lifecycle.settle(host) is None
    assert open(host["config_file"]).read() == "new: config\n"
