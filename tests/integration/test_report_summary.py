"""
``envoy.report_summary``: the entry a host publishes to the Salt mine for the fleet report, through
the real ``salt-call --local`` on a sandbox host running the formula (files mode, a real Envoy):
LIVE and versions, drift between the config on disk and what the inputs render (a hand edit, a
manifest dropped since the last highstate), requests through each listener since the previous
sample, and where Prometheus scrapes the host.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import REPO, SandboxHost

PORTS = {name: free_port() for name in ("ingress", "app", "egress", "stats")}


@pytest.fixture(scope="module")
def app():
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.app", "--port", str(PORTS["app"]), "--name", "foo"],
                            cwd=REPO)
    wait_for(lambda: http_get(f"http://127.0.0.1:{PORTS['app']}/healthcheck")[0] == 200, what="foo's app")
    yield
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def host(tmp_path_factory, built_bundle):
    tarball, sha256 = built_bundle
    pillar = {"envoy": {"bundle": {"source": tarball.as_uri(), "sha256": sha256}, "roles": ["sidecar"],
                        "listeners": {"egress": {"port": PORTS["egress"]},
                                      "stats": {"address": "127.0.0.1", "port": PORTS["stats"]}},
                        "services": {"bar": {"hosts": ["127.0.0.1:9"]}},
                        "lookup": {"supervisor": "daemon"},
                        "report": {"seconds": 30, "splay": 5},
                        "restart": {"roles": {"sidecar": {"drain_time_s": 1, "parent_shutdown_time_s": 2}}}}}
    sandbox = SandboxHost(tmp_path_factory.mktemp("report-host"), minion_id="report-host", pillar=pillar)
    manifests = Path(sandbox.settings["manifest_dir"])
    manifests.mkdir(parents=True)
    (manifests / "foo.yaml").write_text(yaml.safe_dump({
        "service": "foo", "ingress": {"port": PORTS["ingress"], "app_port": PORTS["app"]},
        "upstreams": [{"service": "bar"}]}))
    sandbox.sync()
    ret = sandbox.apply("envoy")
    assert all(state["result"] for state in ret.values()), {k: v["comment"] for k, v in ret.items() if not v["result"]}
    try:
        yield sandbox
    finally:
        sandbox.salt_call("envoy.stop", check=False)


def summary(host):
    return host.salt_call("envoy.report_summary")[1]


def test_a_live_host_in_step_with_its_inputs(host):
    out = summary(host)
    assert out["format"] == 1 and out["minion"] == "report-host"
    assert abs(out["collected_at"] - time.time()) < 60
    assert out["interval_s"] == 35  # 30 s plus the splay: how old a fresh entry can be
    assert out["status"]["live"] is True and out["status"]["envoy_version"]
    assert out["status"]["bundle"]["current"] == out["status"]["bundle"]["running"]
    assert out["status"]["last_restart"]["outcome"] == "success"
    assert out["manifests"]["services"] == [{"service": "foo", "file": "foo.yaml", "ingress": True,
                                             "upstreams": ["bar"]}]
    assert out["catalogue"] == ["bar"] and out["roles"] == ["sidecar"]
    assert out["drift"]["drift"] is False and out["drift"]["files"] == [], out["drift"]
    assert out["discovery"] == {"configured": False}
    assert out["rejected"] == {"subscriptions": {}, "inputs": None}
    assert out["scrape"] == {"address": "127.0.0.1", "port": PORTS["stats"]}
    assert 0 <= out["config_age_s"] < 600


def test_requests_through_envoy_are_counted_between_two_samples(host, app):
    summary(host)  # the sample the next one is compared with
    for _ in range(3):
        assert http_get(f"http://127.0.0.1:{PORTS['ingress']}/x")[0] == 200
    for _ in range(2):  # a caller's health check is not traffic
        assert http_get(f"http://127.0.0.1:{PORTS['ingress']}/healthcheck")[0] == 200
    out = summary(host)
    listeners = out["traffic"]["listeners"]
    assert listeners["ingress_foo"]["delta"] == 3, out["traffic"]
    assert listeners["egress"]["delta"] == 0
    assert out["traffic"]["over_s"] > 0


def test_a_hand_edit_is_drift_until_put_back(host):
    bootstrap = Path(host.settings["config_file"])
    good = bootstrap.read_text()
    before = summary(host)["drift"]
    assert summary(host)["drift"]["checked_at"] == before["checked_at"]  # nothing changed: no render
    try:
        bootstrap.write_text(good + "# edited by hand\n")
        drift = summary(host)["drift"]
        assert drift["drift"] is True and drift["files"] == ["envoy.yaml"], drift
    finally:
        bootstrap.write_text(good)
    assert summary(host)["drift"]["drift"] is False


def test_a_manifest_dropped_since_the_last_highstate_is_drift(host):
    manifest = Path(host.settings["manifest_dir"]) / "baz.yaml"
    manifest.write_text(yaml.safe_dump({"service": "baz", "upstreams": [{"service": "bar"}]}))
    try:
        drift = summary(host)["drift"]
        assert drift["drift"] is True and drift["files"], drift
        manifest.write_text("service: [not, a, name]\n")
        drift = summary(host)["drift"]
        assert drift["drift"] is None and "baz.yaml" in drift["error"], drift
    finally:
        manifest.unlink()
    assert summary(host)["drift"]["drift"] is False


def test_a_stopped_envoy_is_not_live_and_counts_nothing(host):
    host.salt_call("envoy.stop")
    try:
        out = summary(host)
        assert out["status"]["live"] is False and out["status"]["running"] is False
        assert out["traffic"]["listeners"] == {}
    finally:
        host.salt_call("envoy.start")
    assert summary(host)["status"]["live"] is True
