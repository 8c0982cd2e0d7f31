"""
Discovery is eventually consistent; Envoy's active health checks and outlier detection cover the
gaps (the cluster shape recommended in docs/discovery.md, with test-sized intervals):
a host registered but dead gets no traffic, and a healthy host missing from discovery keeps its
traffic until it also fails its checks.
"""

import subprocess
import sys

import pytest
import requests
import yaml

from tests.helpers.discovery import REPO, DiscoveryService, Envoy, Process, register, wait_until
from tests.helpers.net import free_port, wait_for

HEALTH = {
    "health_checks": [{"timeout": "0.5s", "interval": "0.5s", "no_traffic_interval": "0.5s",
                       "unhealthy_threshold": 2, "healthy_threshold": 2,
                       "http_health_check": {"path": "/healthcheck"}}],
    "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s",
                          "max_ejection_percent": 50},
}
SETTLE_S = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, envoy_bin):
    workdir = tmp_path_factory.mktemp("discovery-health")
    apps = {name: free_port() for name in ("live-1", "live-2")}
    procs = [Process([sys.executable, "-m", "tests.helpers.app", "--port", str(port), "--name", name],
                     workdir / f"app-{name}.log") for name, port in apps.items()]
    try:
        for port in apps.values():
            wait_for(lambda port=port: requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).ok,
                     timeout=20, what=f"app on {port}")
        with DiscoveryService(workdir, ttl=600) as discovery, \
                Envoy(envoy_bin, workdir, discovery.port, ["web"], cluster_extra=HEALTH) as envoy:
            yield discovery, envoy, apps, dict(zip(apps, procs, strict=True))
    finally:
        for proc in procs:
            proc.stop()


def health(envoy, port):
    host = envoy.cluster_hosts("web").get(("127.0.0.1", port))
    return None if host is None else host["health_status"]


def settle(envoy):
    """The health checker runs on the main thread, and workers get its verdict a moment later
    (well under a second here): let a few more checks run before sending traffic."""
    attempts = envoy.stat("cluster.web.health_check.attempt")
    wait_until(lambda: envoy.stat("cluster.web.health_check.attempt") >= attempts + 6, SETTLE_S, "more checks")


def upstreams_hit(envoy, requests_count=40):
    seen = set()
    with requests.Session() as session:
        for _ in range(requests_count):
            resp = session.get(f"http://127.0.0.1:{envoy.listener_port}/", headers={"Host": "web"}, timeout=5)
            assert resp.status_code == 200, resp.text
            seen.add(resp.headers["x-upstream"])
    return seen


def test_a_registered_but_dead_host_gets_no_traffic(stack):
    discovery, envoy, apps, _ = stack
    dead_port = free_port()  # nothing listens there
    for port in (*apps.values(), dead_port):
        assert register(discovery.url, "web", "127.0.0.1", port).status_code == 200
    wait_until(lambda: health(envoy, dead_port) and health(envoy, dead_port).get("failed_active_health_check"),
               SETTLE_S, "the dead host to fail its health checks")
    wait_until(lambda: all(health(envoy, p) and health(envoy, p)["eds_health_status"] == "HEALTHY"
                           and not health(envoy, p).get("failed_active_health_check") for p in apps.values()),
               SETTLE_S, "the live hosts to pass theirs")
    settle(envoy)
    assert upstreams_hit(envoy) == {"live-1", "live-2"}
    assert envoy.stat("cluster.web.upstream_cx_connect_fail") == 0


def test_the_config_generators_eds_clusters_fetch_from_this_service(stack, envoy_bin, tmp_path):
    """The bundle's own generator (envoy_bundle.configgen) renders the EDS cluster; a real Envoy
    running that config gets its endpoints from this service and routes to them."""
    from envoy_bundle.configgen import generate

    discovery, _, apps, _ = stack
    for port in apps.values():
        assert register(discovery.url, "rides", "127.0.0.1", port).status_code == 200
    egress, admin = free_port(), free_port()
    pillar = {"roles": ["sidecar"], "listeners": {"egress": {"address": "127.0.0.1", "port": egress}},
              "discovery": {"address": f"127.0.0.1:{discovery.port}"}, "services": {"rides": {"discovery": "eds"}}}
    manifest = ("/etc/envoy/manifest.d/worker.yaml", "service: worker\nupstreams: [{service: rides}]\n")
    host = {"node_id": "gen-test", "admin_address": "127.0.0.1", "admin_port": admin, "log_dir": str(tmp_path)}
    config = tmp_path / "generated.yaml"
    config.write_text(generate([manifest], pillar, host))
    proc = Process([envoy_bin, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
                   tmp_path / "envoy.log")
    try:
        admin_url = f"http://127.0.0.1:{admin}"

        def rides_healthy():
            status = requests.get(f"{admin_url}/clusters?format=json", timeout=2).json()
            [rides] = [c for c in status["cluster_statuses"] if c["name"] == "rides"]
            hosts = rides.get("host_statuses", [])
            return len(hosts) == 2 and not any(h["health_status"].get("failed_active_health_check") for h in hosts)

        wait_until(rides_healthy, 30, "the generated EDS cluster to get both hosts from discovery")
        seen = set()
        with requests.Session() as session:
            for _ in range(20):
                resp = session.get(f"http://127.0.0.1:{egress}/", headers={"Host": "rides"}, timeout=5)
                assert resp.status_code == 200, resp.text
                seen.add(resp.headers["x-upstream"])
        assert seen == set(apps)
    finally:
        proc.stop()


def test_a_healthy_host_missing_from_discovery_keeps_traffic_until_it_fails_checks(stack):
    discovery, envoy, apps, procs = stack
    port = apps["live-2"]
    resp = requests.delete(f"{discovery.url}/v1/registration/web/127.0.0.1:{port}", timeout=5)
    assert resp.status_code == 200
    removed = envoy.stat("cluster.web.update_success")
    wait_until(lambda: envoy.stat("cluster.web.update_success") > removed, SETTLE_S,
               "Envoy to fetch the answer without live-2")
    assert health(envoy, port) is not None, "a host still passing checks must stay"
    assert upstreams_hit(envoy) == {"live-1", "live-2"}

    procs["live-2"].stop()
    wait_until(lambda: health(envoy, port) is None, SETTLE_S, "live-2 to go once it fails its checks")
    settle(envoy)
    assert upstreams_hit(envoy) == {"live-1"}


def test_the_documented_cluster_shape_is_valid_for_the_real_envoy(envoy_bin, tmp_path):
    doc = (REPO / "docs" / "discovery.md").read_text()
    block = doc.split("<!-- envoy-validated-clusters -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    clusters = yaml.safe_load(block)
    assert [c["type"] for c in clusters] == ["STRICT_DNS", "EDS"]
    config = tmp_path / "documented.yaml"
    config.write_text(yaml.safe_dump({"node": {"id": "doc-check", "cluster": "doc-check"},
                                      "static_resources": {"clusters": clusters}}))
    check = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
