"""
``envoy.clean`` through the real ``salt-call --local``: after the whole formula ran (bundle, config,
Envoy under its restarter), clean stops Envoy and removes what the formula created, keeps the
services' manifests and the logs; test=True predicts and touches nothing; a second clean changes
nothing.
"""

from pathlib import Path

import pytest

from tests.helpers.net import free_port
from tests.helpers.sandbox import SandboxHost

MANIFEST = "service: foo\ningress: {{port: {port}, app_port: {app_port}}}\n"


@pytest.fixture(scope="module")
def host(tmp_path_factory, built_bundle):
    tarball, sha256 = built_bundle
    pillar = {"envoy": {"bundle": {"source": tarball.as_uri(), "sha256": sha256}, "roles": ["sidecar"],
                        "listeners": {"egress": {"port": free_port()}}, "lookup": {"supervisor": "daemon"},
                        "restart": {"roles": {"sidecar": {"drain_time_s": 1, "parent_shutdown_time_s": 2}}}}}
    sandbox = SandboxHost(tmp_path_factory.mktemp("clean-host"), minion_id="clean-host", pillar=pillar)
    manifests = Path(sandbox.settings["manifest_dir"])
    manifests.mkdir(parents=True)
    (manifests / "foo.yaml").write_text(MANIFEST.format(port=free_port(), app_port=free_port()))
    sandbox.sync()
    try:
        states = sandbox.apply("envoy")
        assert all(s["result"] for s in states.values()), states
        yield sandbox
    finally:
        sandbox.salt_call("envoy.stop", check=False)


def running(host):
    return host.salt_call("envoy.status")[1]["running"]


def test_clean_stops_envoy_and_removes_what_the_formula_created(host):
    paths = host.settings
    assert running(host)
    predicted = host.apply("envoy.clean", test=True)
    assert predicted["envoy-service-clean-dead"]["result"] is None
    assert predicted["envoy-service-clean-dead"]["changes"]["stopped"] is True
    assert running(host) and Path(paths["config_file"]).exists(), "test=True must not touch anything"

    cleaned = host.apply("envoy.clean")
    assert all(s["result"] is True for s in cleaned.values()), cleaned
    assert cleaned["envoy-service-clean-dead"]["comment"] == "envoy stopped"
    assert not running(host)
    assert host.salt_call("envoy.orphans")[1] == []
    for gone in (paths["install_dir"], paths["config_file"], paths["config_file"] + ".prev", paths["run_dir"]):
        assert not Path(gone).exists(), gone
    assert (Path(paths["manifest_dir"]) / "foo.yaml").exists(), "manifests belong to the services"
    assert Path(paths["log_dir"]).is_dir(), "logs belong to the operators"

    again = host.apply("envoy.clean")
    assert [sid for sid, s in again.items() if s["changes"]] == []
    assert again["envoy-service-clean-dead"]["comment"] == "envoy is not running"
