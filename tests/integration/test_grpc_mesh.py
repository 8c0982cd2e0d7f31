"""
gRPC through a rendered sidecar, with a real gRPC client and servers (grpcio): two backends of one
http2 catalogue service behind the egress listener, one of them NOT_SERVING for the checked gRPC
service. Envoy's active health check must speak gRPC's health protocol (an HTTP/1.1 GET, what an
http2 service used to get, fails on both and routes every call in panic mode), so the unhealthy
backend gets no call. A long server stream through the egress must run to its end: the route
timeout covers a whole response, so a stream gets max_stream_duration_ms instead, and
stream_idle_timeout_ms resets a stream that goes silent. And a gRPC server behind its own sidecar
ingress (app_protocol http2, the ingress health check on gRPC's health path) is reachable through
the egress and leaves rotation when the host drains.
"""

import sys

import pytest
import requests
from envoy_bundle.configgen import generate

from tests.helpers.discovery import Process
from tests.helpers.net import free_port, wait_for

grpc = pytest.importorskip("grpc", reason="needs grpcio (pip install -e '.[test]')")
pytest.importorskip("grpc_health.v1", reason="needs grpcio-health-checking (pip install -e '.[test]')")

from tests.helpers.grpc_app import SERVICE, STREAM, UNARY  # noqa: E402  (after the skip: imports grpc)

CALLS = 200
STREAM_MESSAGES, STREAM_INTERVAL_MS = 100, 200  # a 20 s server stream, longer than the 15 s route timeout


@pytest.fixture(scope="module")
def grpc_mesh(tmp_path_factory, envoy_bin):
    work = tmp_path_factory.mktemp("grpc")
    ports = {name: free_port() for name in ("good", "sick", "egress", "admin", "ingress")}
    procs = []
    try:
        procs.append(Process([sys.executable, "-m", "tests.helpers.grpc_app", "--port", str(ports["good"]),
                              "--name", "good"], work / "good.log"))
        procs.append(Process([sys.executable, "-m", "tests.helpers.grpc_app", "--port", str(ports["sick"]),
                              "--name", "sick", "--not-serving"], work / "sick.log"))
        backends = [f"127.0.0.1:{ports['good']}", f"127.0.0.1:{ports['sick']}"]
        for backend in backends:
            wait_for(lambda backend=backend: _channel_ready(backend), timeout=30, what=f"gRPC backend {backend}")
        # As the docs say to declare a gRPC service: type http2 (health checked with gRPC's health
        # protocol by default), the gRPC service the check asks about, and the callers' stream knobs.
        manifest = (
            "service: caller\n"
            "upstreams:\n"
            "  - {service: pricing, max_stream_duration_ms: 60000}\n"
            "  - {service: pricing-idle, max_stream_duration_ms: 60000, stream_idle_timeout_ms: 1000}\n"
            "  - {service: echo, max_stream_duration_ms: 60000}\n"
        )
        # The good backend as a mesh service: behind this host's sidecar ingress.
        server_manifest = (
            "service: echo\n"
            f"ingress: {{port: {ports['ingress']}, app_port: {ports['good']}, app_protocol: http2,\n"
            "          health_check: /grpc.health.v1.Health/Check, max_stream_duration_ms: 60000}\n"
        )
        pillar = {
            "roles": ["sidecar"],
            "listeners": {"egress": {"port": ports["egress"]}},
            "defaults": {"upstreams": {"health_check": {"interval_ms": 500, "no_traffic_interval_ms": 500,
                                                        "no_traffic_healthy_interval_ms": 500}}},
            "services": {
                "pricing": {"type": "http2", "hosts": backends, "lb_policy": "round_robin",
                            "health_check_grpc_service": SERVICE},
                "pricing-idle": {"type": "http2", "hosts": [backends[0]]},
                "echo": {"type": "http2", "hosts": [f"127.0.0.1:{ports['ingress']}"],
                         "health_check_grpc_service": SERVICE},
            },
        }
        host = {"node_id": "grpc", "admin_port": ports["admin"], "log_dir": str(work)}
        config = work / "envoy.yaml"
        config.write_text(generate([("/etc/envoy/manifest.d/caller.yaml", manifest),
                                    ("/etc/envoy/manifest.d/echo.yaml", server_manifest)], pillar, host))
        envoy = Process([envoy_bin, "-c", str(config), "--disable-hot-restart", "--log-level", "warn",
                         "--concurrency", "1"], work / "envoy.log")
        procs.append(envoy)
        admin = f"http://127.0.0.1:{ports['admin']}"
        wait_for(lambda: requests.get(admin + "/ready", timeout=2).status_code == 200, timeout=30, what="envoy LIVE")
        # Both backends checked: the good one healthy, the sick one failed (it starts failed).
        wait_for(lambda: _health(admin, "pricing") == {backends[0]: True, backends[1]: False}
                 and _health_check_stats(admin, "pricing")["failure"] >= 2,
                 timeout=30, what=f"pricing health as good/sick (envoy log: {work / 'envoy.log'})")
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['egress']}",
                                        options=[("grpc.default_authority", "pricing")])
        yield {"ports": ports, "admin": admin, "channel": channel, "backends": backends, "work": work}
        channel.close()
    finally:
        for proc in reversed(procs):
            proc.stop()


def _channel_ready(target):
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=2)
        return True


def _cluster(admin, name):
    status = requests.get(admin + "/clusters?format=json", timeout=5).json()
    return next((c for c in status.get("cluster_statuses", []) if c["name"] == name), {})


def _host_key(host):
    address = host["address"]["socket_address"]
    return f"{address['address']}:{address['port_value']}"


def _health(admin, cluster):
    """{host:port: passes its active health check?}"""
    return {_host_key(h): not h.get("health_status", {}).get("failed_active_health_check", False)
            for h in _cluster(admin, cluster).get("host_statuses", [])}


def _stat(host, name):
    return next((int(s.get("value", 0)) for s in host.get("stats", []) if s["name"] == name), 0)


def _requests_per_host(admin, cluster):
    return {_host_key(h): _stat(h, "rq_total") for h in _cluster(admin, cluster).get("host_statuses", [])}


def _counter(admin, name):
    text = requests.get(admin + f"/stats?filter=^{name}$", timeout=5).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _health_check_stats(admin, cluster):
    return {key: _counter(admin, f"cluster.{cluster}.health_check.{key}")
            for key in ("attempt", "success", "failure", "network_failure")}


def test_grpc_health_check_keeps_calls_off_the_sick_backend(grpc_mesh):
    admin, (good, sick) = grpc_mesh["admin"], grpc_mesh["backends"]
    unary = grpc_mesh["channel"].unary_unary(UNARY)
    before = _requests_per_host(admin, "pricing")
    answers = [unary(f"call {i}".encode(), timeout=5).decode() for i in range(CALLS)]
    after = _requests_per_host(admin, "pricing")

    assert {answer.split()[0] for answer in answers} == {"good"}, answers[:5]
    assert after[good] - before[good] == CALLS
    assert after[sick] - before[sick] == 0
    assert _counter(admin, "cluster.pricing.lb_healthy_panic") == 0
    checks = _health_check_stats(admin, "pricing")
    # The sick backend answers the gRPC health check NOT_SERVING: a failure, not a network failure.
    assert checks["success"] > 0 and checks["failure"] > 0 and checks["network_failure"] == 0, checks


def test_long_server_stream_through_the_egress_gets_every_message(grpc_mesh):
    admin = grpc_mesh["admin"]
    timeouts_before = _counter(admin, "cluster.pricing.upstream_rq_timeout")
    stream = grpc_mesh["channel"].unary_stream(STREAM)
    request = f"{STREAM_MESSAGES},{STREAM_INTERVAL_MS}".encode()
    received = [message.decode() for message in stream(request, timeout=120)]

    assert received == [f"good {i}" for i in range(STREAM_MESSAGES)]
    assert _counter(admin, "cluster.pricing.upstream_rq_timeout") == timeouts_before


def test_a_stream_silent_longer_than_stream_idle_timeout_is_reset(grpc_mesh):
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_mesh['ports']['egress']}",
                                    options=[("grpc.default_authority", "pricing-idle")])
    wait_for(lambda: _health(grpc_mesh["admin"], "pricing-idle") == {grpc_mesh["backends"][0]: True},
             timeout=30, what="pricing-idle healthy")
    received = []
    with channel, pytest.raises(grpc.RpcError):
        # Two messages 3 s apart on a route with stream_idle_timeout_ms 1000.
        for message in channel.unary_stream(STREAM)(b"2,3000", timeout=60):
            received.append(message.decode())
    assert received == ["good 0"]
    assert _counter(grpc_mesh["admin"], "http.egress.downstream_rq_idle_timeout") >= 1


def test_grpc_server_behind_its_sidecar_ingress(grpc_mesh):
    admin, ingress = grpc_mesh["admin"], f"127.0.0.1:{grpc_mesh['ports']['ingress']}"
    wait_for(lambda: _health(admin, "echo") == {ingress: True}, timeout=30, what="echo healthy through its ingress")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_mesh['ports']['egress']}",
                                    options=[("grpc.default_authority", "echo")])
    with channel:
        assert channel.unary_unary(UNARY)(b"hop", timeout=5) == b"good hop"
        assert [m.decode() for m in channel.unary_stream(STREAM)(b"5,100", timeout=30)] == [
            f"good {i}" for i in range(5)]
    assert _counter(admin, "cluster.local_echo.upstream_cx_http2_total") >= 1  # the app is reached over h2c
    assert _counter(admin, "cluster.local_echo.upstream_cx_http1_total") == 0


def test_a_draining_grpc_host_fails_grpc_health_checks(grpc_mesh):
    admin, ingress = grpc_mesh["admin"], f"127.0.0.1:{grpc_mesh['ports']['ingress']}"
    wait_for(lambda: _health(admin, "echo") == {ingress: True}, timeout=30, what="echo healthy")
    assert requests.post(admin + "/healthcheck/fail", timeout=5).status_code == 200
    try:
        wait_for(lambda: _health(admin, "echo") == {ingress: False}, timeout=30, what="echo out of rotation")
    finally:
        assert requests.post(admin + "/healthcheck/ok", timeout=5).status_code == 200
    wait_for(lambda: _health(admin, "echo") == {ingress: True}, timeout=30, what="echo back in rotation")
