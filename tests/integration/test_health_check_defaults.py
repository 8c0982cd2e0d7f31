"""
With the generator's own health check defaults, an upstream that starts listening after Envoy's
first health check round (a fleet converging at once, a front whose upstream is its own sidecar)
gets traffic within seconds: Envoy's 60 s no-traffic interval applies only to healthy hosts.
"""

import sys
from pathlib import Path

import yaml
from envoy_bundle.configgen import generate

from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.process_group import start, stop

REPO = Path(__file__).resolve().parents[2]


def bar_health_flags(admin):
    lines = http_get(admin + "/clusters")[1].splitlines()
    return [line for line in lines if line.startswith("bar::") and "::health_flags::" in line]


def test_an_upstream_that_comes_up_after_envoy_is_used_within_seconds(tmp_path, envoy_bin):
    ports = {name: free_port() for name in ("bar_app", "egress", "admin")}
    manifest = "service: foo\nupstreams:\n  - {service: bar}\n"
    pillar = {"roles": ["sidecar"], "listeners": {"egress": {"port": ports["egress"]}},
              "services": {"bar": {"hosts": [f"127.0.0.1:{ports['bar_app']}"]}}}
    config = generate([("/etc/envoy/manifest.d/foo.yaml", manifest)], pillar,
                      {"node_id": "late-upstream", "admin_port": ports["admin"], "log_dir": str(tmp_path)})
    check = yaml.safe_load(config)["static_resources"]["clusters"]
    check = next(c for c in check if c["name"] == "bar")["health_checks"][0]
    assert (check["no_traffic_interval"], check["no_traffic_healthy_interval"]) == ("5.000s", "60.000s"), check
    (tmp_path / "envoy.yaml").write_text(config)
    procs = [start([envoy_bin, "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart", "--log-level", "warn",
                    "--concurrency", "1"], tmp_path / "envoy.log")]
    try:
        admin = f"http://127.0.0.1:{ports['admin']}"
        wait_for(lambda: http_get(admin + "/ready")[0] == 200, timeout=30, what="envoy LIVE")
        # bar's only host does not listen yet: its first check fails.
        wait_for(lambda: any("failed_active_hc" in line for line in bar_health_flags(admin)), timeout=30,
                 what="bar's first health check failing")
        procs.append(start([sys.executable, "-m", "tests.helpers.app", "--port", str(ports["bar_app"]),
                            "--name", "bar"], tmp_path / "bar.log"))
        # Envoy's 60 s default would leave bar unused for a minute; the no-traffic interval for a host
        # that is not healthy yet (5 s, two checks to pass) finds it well inside 30 s.
        wait_for(lambda: bar_health_flags(admin) and all(line.endswith("::healthy")
                                                         for line in bar_health_flags(admin)),
                 timeout=30, interval=0.5, what=f"bar healthy ({bar_health_flags(admin)})")
        status, body = http_get(f"http://127.0.0.1:{ports['egress']}/rides", headers={"Host": "bar"})
        assert (status, body) == (200, "bar GET /rides\n")
        stats = http_get(admin + "/stats?filter=^cluster.bar.lb_healthy_panic$")[1]
        assert stats.strip() == "cluster.bar.lb_healthy_panic: 0", stats
    finally:
        for proc in reversed(procs):
            stop(proc)
