"""
The real ``envoy-discovery`` process, once over SQLite and once over a real Redis: the same
behaviour tests run against both stores (Lyft's API v1, v3 REST EDS, validation, metrics).
"""

import json
import re
import time

import pytest
import requests

from tests.helpers.discovery import DiscoveryService, RedisServer, register, tags

CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
GOOD = {"ip": "10.0.0.1", "port": "8080", "revision": "abc123", "service_repo_name": "svc",
        "tags": tags(instance_id="i-good")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("discovery-service")


@pytest.fixture(scope="module")
def redis_server(workdir):
    with RedisServer(workdir) as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def service(request, workdir):
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    with DiscoveryService(workdir, ttl=600, redis_url=redis_url) as svc:
        yield svc


def listed(service, name):
    resp = requests.get(f"{service.url}/v1/registration/{name}", timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def eds(service, *names):
    resp = requests.post(f"{service.url}/v3/discovery:endpoints", timeout=5,
                         json={"node": {"id": "n1", "cluster": "c1"}, "resource_names": list(names), "type_url": CLA})
    assert resp.status_code == 200, resp.text
    return resp.json()


def metric(service, sample):
    text = requests.get(f"{service.url}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_registration_is_listed_in_lyfts_format(service):
    resp = requests.post(f"{service.url}/v1/registration/listed", data=GOOD, timeout=5)
    assert resp.status_code == 200, resp.text
    body = listed(service, "listed")
    assert body["env"] == "production" and body["service"] == "listed"
    [host] = body["hosts"]
    assert {k: host[k] for k in ("service", "ip_address", "port", "revision", "service_repo_name")} == {
        "service": "listed", "ip_address": "10.0.0.1", "port": 8080, "revision": "abc123", "service_repo_name": "svc"}
    assert host["tags"] == json.loads(GOOD["tags"])
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", host["last_check_in"])


def test_heartbeat_updates_the_same_host(service):
    register(service.url, "beat", "10.0.0.2", 80, instance_id="i-1")
    first = listed(service, "beat")["hosts"][0]["last_check_in"]
    form = dict(GOOD, ip="10.0.0.2", port="80", revision="new")
    assert requests.post(f"{service.url}/v1/registration/beat", data=form, timeout=5).status_code == 200
    [host] = listed(service, "beat")["hosts"]
    assert host["revision"] == "new" and host["last_check_in"] >= first
    # A plain heartbeat (nothing but the check-in time changes) still shows in the listing.
    eds(service, "beat")  # warm the EDS cache: the listing must not come from it
    time.sleep(0.01)
    assert requests.post(f"{service.url}/v1/registration/beat", data=form, timeout=5).status_code == 200
    assert listed(service, "beat")["hosts"][0]["last_check_in"] > host["last_check_in"]


def test_two_instances_on_one_ip_and_deregistration(service):
    for port in (81, 82, 83):
        assert register(service.url, "shared", "10.0.0.3", port).status_code == 200
    assert register(service.url, "shared", "10.0.0.4", 81).status_code == 200
    assert len(listed(service, "shared")["hosts"]) == 4

    resp = requests.delete(f"{service.url}/v1/registration/shared/10.0.0.3:81", timeout=5)
    assert resp.status_code == 200 and resp.json()["deleted"] == 1
    ports = sorted((h["ip_address"], h["port"]) for h in listed(service, "shared")["hosts"])
    assert ports == [("10.0.0.3", 82), ("10.0.0.3", 83), ("10.0.0.4", 81)]
    # Lyft's original form (by IP only) removes every instance on that IP.
    resp = requests.delete(f"{service.url}/v1/registration/shared/10.0.0.3", timeout=5)
    assert resp.json()["deleted"] == 2
    assert [h["ip_address"] for h in listed(service, "shared")["hosts"]] == ["10.0.0.4"]
    assert requests.delete(f"{service.url}/v1/registration/shared/10.0.0.3:82", timeout=5).status_code == 404
    assert requests.delete(f"{service.url}/v1/registration/shared/nope:1", timeout=5).status_code == 400


def test_ipv6_hosts(service):
    assert register(service.url, "six", "fd00::1", 8443).status_code == 200
    assert listed(service, "six")["hosts"][0]["ip_address"] == "fd00::1"
    assert requests.delete(f"{service.url}/v1/registration/six/[fd00::1]:8443", timeout=5).status_code == 200


def test_eds_answers_localities_weights_and_stable_versions(service):
    register(service.url, "edsvc", "10.1.0.1", 80, az="us-east-1a", load_balancing_weight=50)
    register(service.url, "edsvc", "10.1.0.2", 80, az="us-east-1b", canary=True)
    register(service.url, "edsvc", "10.1.0.3", 80, az="us-east-1a")
    answer = eds(service, "edsvc", "unknown")
    assert answer["type_url"] == CLA
    by_name = {r["cluster_name"]: r for r in answer["resources"]}
    assert by_name["unknown"] == {"@type": CLA, "cluster_name": "unknown", "endpoints": []}
    localities = {e["locality"]["zone"]: e for e in by_name["edsvc"]["endpoints"]}
    assert sorted(localities) == ["us-east-1a", "us-east-1b"]
    a_endpoints = localities["us-east-1a"]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in a_endpoints] == [
        {"address": "10.1.0.1", "port_value": 80}, {"address": "10.1.0.3", "port_value": 80}]
    assert a_endpoints[0]["load_balancing_weight"] == 50 and "load_balancing_weight" not in a_endpoints[1]
    assert localities["us-east-1b"]["lb_endpoints"][0]["metadata"] == {
        "filter_metadata": {"envoy.lb": {"canary": True}}}

    # A heartbeat changes nothing Envoy sees: same version. A new host changes it.
    register(service.url, "edsvc", "10.1.0.1", 80, az="us-east-1a", load_balancing_weight=50)
    assert eds(service, "edsvc", "unknown")["version_info"] == answer["version_info"]
    register(service.url, "edsvc", "10.1.0.4", 80)
    assert eds(service, "edsvc", "unknown")["version_info"] != answer["version_info"]


def test_malformed_discovery_requests_are_refused(service):
    url = f"{service.url}/v3/discovery:endpoints"
    assert requests.post(url, data="{nope", timeout=5).status_code == 400
    assert requests.post(url, json={"resource_names": "foo"}, timeout=5).status_code == 400
    resp = requests.post(url, json={"type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}, timeout=5)
    assert resp.status_code == 400 and "type_url" in resp.json()["error"]


BAD_REGISTRATIONS = [
    ("ip", {"ip": None}), ("ip", {"ip": "not-an-ip"}), ("ip", {"ip": "10.0.0.300"}), ("ip", {"ip": "0.0.0.0"}),
    ("ip", {"ip": "224.0.0.1"}),
    ("port", {"port": None}), ("port", {"port": "0"}), ("port", {"port": "65536"}), ("port", {"port": "-1"}),
    ("port", {"port": "80a"}),
    ("revision", {"revision": None}), ("revision", {"revision": "r" * 300}),
    ("service_repo_name", {"service_repo_name": None}),
    ("tags", {"tags": None}), ("tags", {"tags": "{not json"}), ("tags", {"tags": "[]"}),
    ("tags", {"tags": json.dumps({"az": "a", "region": "r", "instance_id": "i", "pad": "x" * 5000})}),
    ("tags.az", {"tags": json.dumps({"region": "r", "instance_id": "i"})}),
    ("tags.region", {"tags": json.dumps({"az": "a", "region": 5, "instance_id": "i"})}),
    ("tags.instance_id", {"tags": json.dumps({"az": "a", "region": "r", "instance_id": ""})}),
    ("tags.canary", {"tags": tags(canary="yes")}),
    ("tags.load_balancing_weight", {"tags": tags(load_balancing_weight=0)}),
    ("tags.load_balancing_weight", {"tags": tags(load_balancing_weight=101)}),
    ("tags.load_balancing_weight", {"tags": tags(load_balancing_weight="50")}),
    ("tags.load_balancing_weight", {"tags": tags(load_balancing_weight=True)}),
    ("tags.load_balancing_weight", {"tags": tags(load_balancing_weight=1.5)}),
]


def test_bad_registrations_get_400_naming_the_field_and_store_nothing(service):
    rejected = metric(service, 'discovery_registrations_total{result="rejected"}')
    for field, override in BAD_REGISTRATIONS:
        form = {k: v for k, v in dict(GOOD, **override).items() if v is not None}
        resp = requests.post(f"{service.url}/v1/registration/refused", data=form, timeout=5)
        assert resp.status_code == 400, (field, override, resp.text)
        assert resp.json()["field"] == field and resp.json()["error"].startswith(f"{field}:"), resp.text
    resp = requests.post(f"{service.url}/v1/registration/bad%20name!", data=GOOD, timeout=5)
    assert resp.status_code == 400 and resp.json()["field"] == "service"
    resp = requests.post(f"{service.url}/v1/registration/refused", data=dict(GOOD, revision="x" * 20000), timeout=5)
    assert resp.status_code == 400 and resp.json()["field"] == "body"
    assert listed(service, "refused")["hosts"] == []
    assert eds(service, "refused")["resources"][0]["endpoints"] == []
    assert metric(service, 'discovery_registrations_total{result="rejected"}') == rejected + len(BAD_REGISTRATIONS) + 2


def test_health_and_metrics(service):
    assert requests.get(f"{service.url}/healthcheck", timeout=5).text == "OK"
    before = metric(service, 'discovery_eds_requests_total{result="ok"}')
    register(service.url, "metered", "10.2.0.1", 80)
    register(service.url, "metered", "10.2.0.2", 80)
    eds(service, "metered")
    resp = requests.get(f"{service.url}/metrics", timeout=5)
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE discovery_hosts gauge" in resp.text
    assert metric(service, 'discovery_hosts{service="metered"}') == 2
    assert metric(service, 'discovery_eds_requests_total{result="ok"}') == before + 1
    assert metric(service, 'discovery_registrations_total{result="ok"}') >= 2


def test_workers_share_one_port_and_a_dead_worker_is_replaced(tmp_path):
    import os
    import signal
    from pathlib import Path

    from tests.helpers.discovery import wait_until

    with DiscoveryService(tmp_path, ttl=600, extra_args=["--workers", "2"]) as svc:
        pid = svc.proc.pid

        def workers():
            return set(map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()))

        wait_until(lambda: len(workers()) == 2, 10, "two workers")
        for i in range(20):  # a new connection each: the kernel spreads them over both workers
            assert register(svc.url, "spread", f"10.9.0.{i + 1}", 80).status_code == 200
        counts = {metric(svc, 'discovery_registrations_total{result="ok"}') for _ in range(10)}
        assert counts == {20.0}  # every worker's /metrics sums both workers' counters
        victim = min(workers())
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(workers()) == 2 and victim not in workers(), 10, "a replacement worker")
        assert metric(svc, 'discovery_registrations_total{result="ok"}') == 20.0  # counters survive it
        assert len(eds(svc, "spread")["resources"][0]["endpoints"][0]["lb_endpoints"]) == 20
        assert len(listed(svc, "spread")["hosts"]) == 20
