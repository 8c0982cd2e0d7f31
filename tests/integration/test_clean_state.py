"""
``envoy.clean`` through the real ``salt-call --local``: after the whole formula ran (bundle, config,
Envoy under its restarter), clean drains Envoy (health check failing first) and stops it, and
removes what the formula created, keeps the services' manifests and the logs; a caller that
health-checks the host loses no request meanwhile; test=True predicts and touches nothing; a
second clean changes nothing.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.discovery import Process
from tests.helpers.envoy_host import UpstreamApp
from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, wait_for
from tests.helpers.sandbox import SandboxHost

MANIFEST = "service: foo\ningress: {{port: {port}, app_port: {app_port}}}\n"
DRAIN_S = 3


@pytest.fixture(scope="module")
def host(tmp_path_factory, built_bundle):
    tarball, sha256 = built_bundle
    pillar = {"envoy": {"bundle": {"source": tarball.as_uri(), "sha256": sha256}, "roles": ["sidecar"],
                        "listeners": {"egress": {"port": free_port()}}, "lookup": {"supervisor": "daemon"},
                        "restart": {"roles": {"sidecar": {"drain_time_s": 1, "parent_shutdown_time_s": 2}},
                                    "full_restart_drain_s": DRAIN_S}}}
    sandbox = SandboxHost(tmp_path_factory.mktemp("clean-host"), minion_id="clean-host", pillar=pillar)
    manifests = Path(sandbox.settings["manifest_dir"])
    manifests.mkdir(parents=True)
    sandbox.ingress_port, app_port = free_port(), free_port()
    (manifests / "foo.yaml").write_text(MANIFEST.format(port=sandbox.ingress_port, app_port=app_port))
    sandbox.sync()
    app = UpstreamApp(app_port, name="foo").start()
    try:
        states = sandbox.apply("envoy")
        assert all(s["result"] for s in states.values()), {k: v["comment"] for k, v in states.items() if v["result"] is not True}
        yield sandbox
    finally:
        sandbox.salt_call("envoy.stop", check=False)
        app.stop()


def caller_config(admin_port, listener_port, backends):
    """An Envoy in front of ``backends`` that health-checks each one, as a load balancer or another
    host's sidecar does: a host failing /healthcheck is taken out within a second."""
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                 for port in backends]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{"name": "in", "address": {"socket_address": {"address": "127.0.0.1",
                                                                        "port_value": listener_port}},
                           "filter_chains": [{"filters": [{
                               "name": "envoy.filters.network.http_connection_manager",
                               "typed_config": {
                                   "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                            "http_connection_manager.v3.HttpConnectionManager",
                                   "stat_prefix": "in",
                                   "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                                       {"match": {"prefix": "/"}, "route": {"cluster": "foo"}}]}]},
                                   "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                                       "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                               }}]}]}],
            "clusters": [{"name": "foo", "type": "STATIC", "connect_timeout": "0.25s",
                          "load_assignment": {"cluster_name": "foo", "endpoints": [{"lb_endpoints": endpoints}]},
                          "health_checks": [{"timeout": "0.5s", "interval": "0.25s", "unhealthy_threshold": 1,
                                             "healthy_threshold": 1,
                                             "http_health_check": {"path": "/healthcheck"}}]}],
        },
    }


def running(host):
    return host.salt_call("envoy.status")[1]["running"]


def test_clean_drains_then_stops_envoy_and_removes_what_the_formula_created(host, envoy_bin, tmp_path):
    paths = host.settings
    assert running(host)
    predicted = host.apply("envoy.clean", test=True)
    assert predicted["envoy-service-clean-dead"]["result"] is None
    assert predicted["envoy-service-clean-dead"]["changes"]["stopped"] is True
    assert f"drain for {DRAIN_S}s" in predicted["envoy-service-clean-dead"]["comment"]
    assert running(host) and Path(paths["config_file"]).exists(), "test=True must not touch anything"

    # A caller health-checking this host's ingress and a second instance of foo, under load.
    other = UpstreamApp(name="foo").start()
    admin_port, listener_port = free_port(), free_port()
    config = tmp_path / "caller.yaml"
    config.write_text(json.dumps(caller_config(admin_port, listener_port, [host.ingress_port, other.port])))
    check = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    caller = Process([envoy_bin, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
                     tmp_path / "caller.log")
    try:
        wait_for(lambda: _healthy_hosts(admin_port) == 2, timeout=30,
                 what="the caller sees both instances healthy")
        with LoadRunner(f"http://127.0.0.1:{listener_port}/work", connections=8, rate=400) as load:
            time.sleep(1)
            started = time.monotonic()
            cleaned = host.apply("envoy.clean")
            took = time.monotonic() - started
            time.sleep(1)
    finally:
        caller.stop()
        other.stop()
    assert all(s["result"] is True for s in cleaned.values()), cleaned
    assert cleaned["envoy-service-clean-dead"]["comment"] == (
        f"envoy stopped after draining: healthcheck failed, drained {DRAIN_S}s")
    assert took >= DRAIN_S
    assert load.result.failed == 0, load.result.errors[:5]
    assert load.result.ok > 400, load.result
    assert not running(host)
    assert host.salt_call("envoy.orphans")[1] == []
    for gone in (paths["install_dir"], paths["config_file"], paths["config_file"] + ".prev", paths["run_dir"]):
        assert not Path(gone).exists(), gone
    assert (Path(paths["manifest_dir"]) / "foo.yaml").exists(), "manifests belong to the services"
    left = sorted(p.name for p in Path(paths["config_dir"]).iterdir())
    assert left == [Path(paths["manifest_dir"]).name], f"clean left config files behind: {left}"
    assert Path(paths["log_dir"]).is_dir(), "logs belong to the operators"

    again = host.apply("envoy.clean")
    assert [sid for sid, s in again.items() if s["changes"]] == []
    assert again["envoy-service-clean-dead"]["comment"] == "envoy is not running"
    status = host.salt_call("envoy.status")[1]
    assert status["bundle"] == {"current": None, "running": None}, "no bundle left: none is current"


def _healthy_hosts(admin_port):
    import requests

    clusters = requests.get(f"http://127.0.0.1:{admin_port}/clusters?format=json", timeout=5).json()
    hosts = next(c for c in clusters["cluster_statuses"] if c["name"] == "foo").get("host_statuses", [])
    return sum(1 for h in hosts if not (h.get("health_status") or {}).get("failed_active_health_check"))
