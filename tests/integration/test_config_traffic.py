"""
A rendered sidecar + front config carries real traffic: the real envoy runs it, two tiny apps sit
behind it, and requests go through the egress listener (Host = service name), a front route (to
foo through foo's own sidecar ingress) and the health check filter that drains a listener.
"""

import sys
import urllib.request
from pathlib import Path

import pytest
from envoy_bundle.configgen import generate

from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.process_group import start, stop

REPO = Path(__file__).resolve().parents[2]


def post(url):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, envoy_bin):
    work = tmp_path_factory.mktemp("traffic")
    ports = {name: free_port() for name in ("foo_app", "bar_app", "ingress", "egress", "front", "admin")}
    procs = []
    try:
        for name in ("foo", "bar"):
            procs.append(start([sys.executable, "-m", "tests.helpers.app", "--port", str(ports[f"{name}_app"]),
                                "--name", name], work / f"{name}.log"))
        # Apps first: Envoy's first health check round happens at start-up.
        for app in ("foo_app", "bar_app"):
            wait_for(lambda app=app: http_get(f"http://127.0.0.1:{ports[app]}/healthcheck")[0] == 200,
                     timeout=30, what=app)
        manifest = (f"service: foo\ningress: {{port: {ports['ingress']}, app_port: {ports['foo_app']}}}\n"
                    "upstreams:\n  - {service: bar, timeout_ms: 2000, retries: 1}\n")
        pillar = {
            "roles": ["sidecar", "front"],
            "listeners": {"egress": {"port": ports["egress"]},
                          "front": {"address": "127.0.0.1", "http_port": ports["front"]}},
            # foo's cluster points at this Envoy's own ingress, which is not bound yet when the first
            # health check round runs: recheck soon rather than after Envoy's default 60 s.
            "defaults": {"upstreams": {"health_check": {"interval_ms": 1000, "no_traffic_interval_ms": 1000}}},
            "services": {"foo": {"hosts": [f"127.0.0.1:{ports['ingress']}"]},
                         "bar": {"hosts": [f"127.0.0.1:{ports['bar_app']}"]}},
            "routes": [{"name": "bar", "match": {"prefix": "/bar/"}, "service": "bar"},
                       {"name": "foo", "match": {"prefix": "/"}, "service": "foo"}],
        }
        host = {"node_id": "traffic", "admin_port": ports["admin"], "log_dir": str(work)}
        config = work / "envoy.yaml"
        config.write_text(generate([("/etc/envoy/manifest.d/foo.yaml", manifest)], pillar, host))
        procs.append(start([envoy_bin, "-c", str(config), "--disable-hot-restart", "--log-level", "warn",
                            "--concurrency", "1"], work / "envoy.log"))
        admin = f"http://127.0.0.1:{ports['admin']}"
        wait_for(lambda: http_get(admin + "/ready")[0] == 200, timeout=30, what="envoy LIVE")
        # Active health checks must pass before Envoy sends traffic without panic routing.
        wait_for(lambda: "bar::127.0.0.1:" in http_get(admin + "/clusters")[1]
                 and "health_flags::/failed_active_hc" not in http_get(admin + "/clusters")[1],
                 timeout=30, what="healthy upstreams")
        yield {"ports": ports, "admin": admin, "work": work, "procs": procs}
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_egress_routes_by_host_header_to_the_upstream(mesh):
    egress = f"http://127.0.0.1:{mesh['ports']['egress']}"
    status, body = http_get(egress + "/orders?id=7", headers={"Host": "bar"})
    assert (status, body) == (200, "bar GET /orders?id=7\n")
    status, _ = http_get(egress + "/orders", headers={"Host": f"bar:{mesh['ports']['egress']}"})
    assert status == 200
    status, _ = http_get(egress + "/orders", headers={"Host": "nobody"})
    assert status == 404  # only the manifest's upstreams have a virtual host


def test_front_routes_reach_the_apps(mesh):
    front = f"http://127.0.0.1:{mesh['ports']['front']}"
    assert http_get(front + "/bar/x") == (200, "bar GET /bar/x\n")
    # foo is reached through foo's sidecar ingress, as another host's front would.
    assert http_get(front + "/hello") == (200, "foo GET /hello\n")


def test_per_upstream_stats_and_access_log(mesh):
    front = f"http://127.0.0.1:{mesh['ports']['front']}"
    http_get(front + "/bar/stats-probe")
    stats = http_get(mesh["admin"] + "/stats?filter=upstream_rq_2xx")[1]
    assert "cluster.bar.upstream_rq_2xx:" in stats and "cluster.local_foo.upstream_rq_2xx:" in stats
    post(mesh["admin"] + "/reopen_logs")  # flushes the access log
    wait_for(lambda: "/bar/stats-probe" in (mesh["work"] / "access.log").read_text(), timeout=10,
             what="access log line")


def test_healthcheck_fail_drains_front_and_ingress(mesh):
    front = f"http://127.0.0.1:{mesh['ports']['front']}/healthcheck"
    ingress = f"http://127.0.0.1:{mesh['ports']['ingress']}/healthcheck"
    assert http_get(front)[0] == 200 and http_get(ingress)[0] == 200
    assert post(mesh["admin"] + "/healthcheck/fail") == 200
    try:
        assert http_get(front)[0] == 503
        assert http_get(ingress)[0] == 503
    finally:
        assert post(mesh["admin"] + "/healthcheck/ok") == 200
    assert http_get(front)[0] == 200
