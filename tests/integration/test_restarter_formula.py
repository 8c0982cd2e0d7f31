"""
The formula's own chain on a sandbox host, through the real ``salt-call``: ``envoy.service`` installs
the real bundle (envoy.bundle), renders and validates the config from a manifest and pillar
(envoy.config), and runs Envoy under the bundle's restarter (daemon supervisor). In files mode (a new
install's default) a manifest change is applied without a restart; switched to static mode, the
switch and then each change hot restart Envoy; a run with nothing changed restarts nothing.
"""

import json
from pathlib import Path

import pytest

from tests.helpers.envoy_host import UpstreamApp, kill_pids, read_status
from tests.helpers.net import free_port, http_get
from tests.helpers.sandbox import SandboxHost

RUNNING = "envoy-service-running"
RESTART = {"drain_time_s": 2, "parent_shutdown_time_s": 3, "live_timeout_s": 20, "stop_timeout_s": 5,
           "full_restart_drain_s": 1, "concurrency": 1}


def manifest(ingress_port, app_port, timeout_ms):
    return (f"service: foo\n"
            f"ingress: {{port: {ingress_port}, app_port: {app_port}}}\n"
            f"upstreams:\n  - {{service: bar, timeout_ms: {timeout_ms}}}\n")


@pytest.fixture(scope="module")
def formula_host(tmp_path_factory, built_bundle):
    tarball, sha256 = built_bundle
    app = UpstreamApp(name="foo").start()
    host = SandboxHost(tmp_path_factory.mktemp("formula-host"), minion_id="restarter-formula", base_id=231)
    host.ingress_port = free_port()
    host.app = app
    host.set_pillar({"envoy": {
        "bundle": {"source": tarball.as_uri(), "sha256": sha256},
        "roles": ["sidecar"],
        "listeners": {"egress": {"port": free_port()}},
        "services": {"bar": {"hosts": [f"127.0.0.1:{free_port()}"]}},
        "restart": RESTART,
    }})
    host.manifest = Path(host.settings["manifest_dir"]) / "foo.yaml"
    host.manifest.parent.mkdir(parents=True, exist_ok=True)
    host.manifest.write_text(manifest(host.ingress_port, app.port, 250))
    host.sync()
    try:
        yield host
    finally:
        host.salt_call("envoy.stop", check=False, timeout=60)
        status = read_status(host.settings["run_dir"]) or {}
        kill_pids([status.get("restarter_pid"), *[e["pid"] for e in status.get("epochs", [])]])
        app.stop()


def serves(host):
    return http_get(f"http://127.0.0.1:{host.ingress_port}/hello", timeout=3)


def test_service_sls_installs_renders_and_runs_envoy(formula_host):
    out = formula_host.apply("envoy.service")
    failed = {k: v["comment"] for k, v in out.items() if v["result"] is not True}
    assert not failed, failed
    running = out[RUNNING]
    # Salt skips mod_watch when the state itself changed something: started with the new config.
    assert running["changes"]["started"] is True, running
    status = read_status(formula_host.settings["run_dir"])
    assert status["live_epoch"] == 0
    assert status["bundle_id"] == Path(formula_host.settings["install_dir"], "current").resolve().name
    code, body = serves(formula_host)
    assert code == 200 and body.startswith("foo GET /hello")


def egress_timeout(host):
    """The bar route's timeout as the running Envoy has it (its routes from RDS)."""
    _, settings = host.salt_call("envoy.settings")
    text = http_get(f"http://127.0.0.1:{settings['admin_port']}/config_dump?resource=dynamic_route_configs")[1]
    for entry in json.loads(text)["configs"]:
        config = entry["route_config"]
        if config["name"] == "egress":
            return config["virtual_hosts"][0]["routes"][0]["route"]["timeout"]
    return None


def test_unchanged_run_restarts_nothing_and_a_manifest_change_applies_live(formula_host):
    before = read_status(formula_host.settings["run_dir"])
    again = formula_host.apply("envoy.service")
    assert not again[RUNNING]["changes"], again[RUNNING]
    assert read_status(formula_host.settings["run_dir"])["restart_seq"] == before["restart_seq"]
    assert egress_timeout(formula_host) == "0.250s"

    formula_host.manifest.write_text(manifest(formula_host.ingress_port, formula_host.app.port, 300))
    out = formula_host.apply("envoy.service")
    config, running = out["envoy-config-file-managed"], out[RUNNING]
    assert config["result"] is True and config["changes"]["restart"] == "none", config
    assert config["changes"]["summary"] == ["route bar: changed (egress)"]
    assert running["result"] is True and running["changes"] == {}, running
    assert "no restart needed" in running["comment"]
    after = read_status(formula_host.settings["run_dir"])
    assert after["restart_seq"] == before["restart_seq"] and after["live_epoch"] == before["live_epoch"]
    assert egress_timeout(formula_host) == "0.300s"
    assert serves(formula_host)[0] == 200


def test_static_mode_switch_and_changes_hot_restart(formula_host):
    before = read_status(formula_host.settings["run_dir"])
    formula_host.set_pillar({"envoy": {**formula_host.pillar["envoy"], "lookup": {
        **formula_host.pillar["envoy"]["lookup"], "config_mode": "static"}}})
    out = formula_host.apply("envoy.service")
    assert out[RUNNING]["changes"]["restart"] == "hot", out[RUNNING]
    switched = read_status(formula_host.settings["run_dir"])
    assert switched["live_epoch"] == before["live_epoch"] + 1

    formula_host.manifest.write_text(manifest(formula_host.ingress_port, formula_host.app.port, 350))
    out = formula_host.apply("envoy.service")
    running = out[RUNNING]
    assert running["result"] is True and running["changes"]["restart"] == "hot", running
    after = read_status(formula_host.settings["run_dir"])
    assert after["live_epoch"] == switched["live_epoch"] + 1
    assert after["config_sha256"] != switched["config_sha256"]
    assert serves(formula_host)[0] == 200
    assert not Path(formula_host.settings["config_dir"], "xds").exists() or out  # tidied once static runs
    again = formula_host.apply("envoy.config")
    assert not Path(formula_host.settings["config_dir"], "xds").exists(), "static mode leaves no xDS files"
    assert all(not s["changes"] for s in again.values())
