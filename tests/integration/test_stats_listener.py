"""
The stats listener (pillar ``envoy:listeners:stats``), run by the real envoy in both config modes:
Prometheus gets ``/stats/prometheus`` on the pillar's port, while the admin API stays on 127.0.0.1
and nothing else of it is reachable through the listener (other paths, other methods).
"""

import urllib.request

import pytest
from envoy_bundle.configgen.generate import generate_outputs

from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.process_group import start, stop


def write_outputs(config_dir, files):
    for rel, text in files.items():
        path = config_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture(scope="module", params=["static", "files"])
def envoy(request, tmp_path_factory, envoy_bin):
    work = tmp_path_factory.mktemp(f"stats-{request.param}")
    ports = {name: free_port() for name in ("admin", "stats", "ingress", "app", "egress")}
    manifest = f"service: foo\ningress: {{port: {ports['ingress']}, app_port: {ports['app']}}}\n"
    pillar = {"roles": ["sidecar"],
              "listeners": {"egress": {"port": ports["egress"]},
                            "stats": {"address": "127.0.0.1", "port": ports["stats"]}}}
    config_dir = work / "etc"
    host = {"node_id": "stats-host", "admin_port": ports["admin"], "log_dir": str(work),
            "config_mode": request.param, "config_dir": str(config_dir)}
    out = generate_outputs([("/etc/envoy/manifest.d/foo.yaml", manifest)], pillar, host)
    write_outputs(config_dir, out["files"])
    proc = start([envoy_bin, "-c", str(config_dir / "envoy.yaml"), "--disable-hot-restart", "--log-level", "warn",
                  "--concurrency", "1"], work / "envoy.log")
    try:
        admin = f"http://127.0.0.1:{ports['admin']}"
        wait_for(lambda: http_get(admin + "/ready")[0] == 200, timeout=30, what="envoy LIVE")
        yield {"mode": request.param, "stats": f"http://127.0.0.1:{ports['stats']}", "admin": admin,
               "files": out["files"]}
    finally:
        stop(proc)


def test_prometheus_text_is_served(envoy):
    status, body = http_get(envoy["stats"] + "/stats/prometheus")
    assert status == 200, body
    assert "# TYPE envoy_server_hot_restart_epoch gauge" in body
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_foo"}' in body
    # The scrapes count on their own listener, apart from the services' traffic.
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="stats"}' in body


def test_nothing_else_of_the_admin_api_is_reachable(envoy):
    for path in ("/config_dump", "/clusters", "/stats", "/server_info", "/", "/stats/prometheus/../config_dump"):
        status, body = http_get(envoy["stats"] + path)
        assert status == 404, (path, status, body[:200])
        assert "only GET /stats/prometheus" in body
    # A POST that the admin API would act on (it fails the health check) never reaches it.
    request = urllib.request.Request(envoy["stats"] + "/stats/prometheus", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 404
    status, _ = http_get(envoy["admin"] + "/config_dump")
    assert status == 200  # the admin API itself still answers, on 127.0.0.1


def test_the_listener_is_where_the_mode_puts_listeners(envoy):
    bootstrap = envoy["files"]["envoy.yaml"]
    if envoy["mode"] == "static":
        assert 'name: "stats"' in bootstrap and 'name: "envoy_admin"' in bootstrap
    else:  # an xDS file the running Envoy can change without a restart, like every other listener
        assert "name: stats" not in bootstrap and "envoy_admin" not in bootstrap
        [lds] = [text for rel, text in envoy["files"].items() if rel.endswith("lds/listeners.yaml")]
        assert "name: stats" in lds
        assert any(rel.endswith("rds/stats/routes.yaml") for rel in envoy["files"])
