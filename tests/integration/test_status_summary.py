"""
``envoy.status`` as an operator scans it across a fleet: one summary line first, ISO times, and the
outcome of the last scheduled highstate, so a host whose convergence fails (while its Envoy stays
LIVE on the last good config) says so. Through the real ``salt-call --local`` on a sandbox host.
"""

import re
from pathlib import Path

import pytest

from tests.helpers.net import free_port
from tests.helpers.sandbox import SandboxHost, deep_merge

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


@pytest.fixture(scope="module")
def host(tmp_path_factory, built_bundle):
    tarball, sha256 = built_bundle
    pillar = {"envoy": {"bundle": {"source": tarball.as_uri(), "sha256": sha256}, "roles": ["sidecar", "front"],
                        "listeners": {"egress": {"port": free_port()}, "front": {"http_port": free_port()}},
                        "services": {"foo": {"hosts": ["127.0.0.1:9"]}},
                        "routes": [{"name": "foo", "match": {"prefix": "/"}, "service": "foo"}],
                        "lookup": {"supervisor": "daemon"},
                        "restart": {"roles": {"sidecar": {"drain_time_s": 1, "parent_shutdown_time_s": 2},
                                              "front": {"drain_time_s": 1, "parent_shutdown_time_s": 2}}}}}
    sandbox = SandboxHost(tmp_path_factory.mktemp("status-host"), minion_id="status-host", pillar=pillar)
    (sandbox.ext_dir / "top.sls").write_text("base:\n  '*':\n    - envoy\n")
    sandbox.sync()
    try:
        yield sandbox
    finally:
        sandbox.salt_call("envoy.stop", check=False)


def status(host):
    return host.salt_call("envoy.status")[1]


def test_status_before_anything_ran(host):
    out = status(host)
    assert out["summary"] == "STOPPED, bundle none, no scheduled highstate recorded"
    assert list(out)[0] == "summary"


def test_a_scheduled_highstate_is_recorded_and_summarized(host):
    code, ret = host.salt_call("envoy.scheduled_highstate", check=False)
    assert code == 0 and all(s["result"] for s in ret.values()), ret
    out = status(host)
    assert re.fullmatch(rf"LIVE, epoch 0, bundle 1\.40\.0-[0-9a-f]{{12}}, config applied, last restart cold "
                        rf"success at {ISO}, highstate ok at {ISO}", out["summary"]), out["summary"]
    assert re.fullmatch(ISO, out["epochs"][0]["started_at"]) and re.fullmatch(ISO, out["highstate"]["finished_at"])
    assert out["highstate"]["result"] is True and out["highstate"]["failed"] == []


def test_failing_convergence_shows_while_envoy_stays_live(host):
    good = host.pillar
    try:
        broken = deep_merge(good, {"envoy": {"routes": [{"name": "pay", "match": {"prefix": "/"},
                                                         "service": "payments"}]}})
        host.set_pillar(broken)
        code, _ = host.salt_call("envoy.scheduled_highstate", check=False)
        assert code != 0, "a failed highstate exits non-zero (cron and systemd see it)"
        out = status(host)
        assert out["live"] and out["summary"].startswith("LIVE, epoch 0, ")
        assert "config applied" in out["summary"]
        assert re.search(rf"highstate FAILED at {ISO} \(\d+ states; envoy-config-file-managed: ", out["summary"])
        failed = out["highstate"]["failed"]
        assert failed[0]["id"] == "envoy-config-file-managed"
        assert "service=payments is not in the service catalogue" in failed[0]["comment"]
    finally:
        host.set_pillar(good)
    host.salt_call("envoy.scheduled_highstate")
    assert "highstate ok at" in status(host)["summary"]


def test_the_record_lives_in_the_run_dir(host):
    assert (Path(host.settings["run_dir"]) / "highstate.json").is_file()
