"""
Early expiry of the registrations of hosts the Salt master lost (docs/discovery.md, "Salt
presence") against real ``envoy-discovery`` processes on both stores: ``POST /v1/expire`` makes a
host's last check-in count ``idle_for`` seconds instead of the TTL (a silent host expires at once,
a host that checks in again gets its full TTL back), the sweep guard still judges the expired
ones, and the master's side (``envoy_formula.discovery_presence``) holds when a large share of the
fleet is lost at once. The reactor and the runner on a real master: tests/mesh/test_discovery_fleet.py.
"""

import time

import pytest
import requests
from envoy_formula import discovery_presence

from tests.helpers.discovery import DiscoveryService, RedisServer, register
from tests.helpers.net import free_port

CONFIG = discovery_presence.settings({"urls": ["http://127.0.0.1:1"], "idle_s": 2})
USERS = ("127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4")


@pytest.fixture(params=["sqlite", "redis"])
def service(request, tmp_path):
    if request.param == "redis":
        with RedisServer(tmp_path) as redis_server, DiscoveryService(tmp_path, ttl=60,
                                                                     redis_url=redis_server.url) as svc:
            yield svc
    else:
        with DiscoveryService(tmp_path, ttl=60) as svc:
            yield svc


def listed(url, service_name):
    return sorted(h["ip_address"] for h in requests.get(f"{url}/v1/registration/{service_name}", timeout=5).json()["hosts"])


def expire(url, ips, idle_for):
    return requests.post(f"{url}/v1/expire", json={"ips": ips, "idle_for": idle_for, "reason": "test"}, timeout=5)


def test_a_silent_host_expires_at_once_and_a_heartbeat_gives_the_ttl_back(service):
    url = service.url
    for ip in USERS:
        assert register(url, "users", ip, 8080).status_code == 200
    assert register(url, "orders", USERS[0], 8081).status_code == 200
    time.sleep(2.2)
    assert register(url, "users", USERS[1], 8080).status_code == 200  # USERS[1] still heartbeats
    resp = expire(url, list(USERS[:2]), idle_for=2)
    assert resp.status_code == 200, resp.text
    expiring = {(e["service"], e["ip"]): e["expires_in"] for e in resp.json()["expiring"]}
    assert expiring.keys() == {("users", USERS[0]), ("orders", USERS[0]), ("users", USERS[1])}
    assert expiring[("users", USERS[0])] == 0 and 1 < expiring[("users", USERS[1])] <= 2
    # users: one of four expired, hidden at once; orders: its only host, kept for the sweep grace.
    assert listed(url, "users") == list(USERS[1:]) and listed(url, "orders") == [USERS[0]]
    time.sleep(1)
    assert register(url, "users", USERS[1], 8080).status_code == 200  # its next heartbeat
    time.sleep(1.5)
    assert listed(url, "users") == list(USERS[1:])  # the full TTL again: still there
    assert "discovery_early_expiries_total 3" in requests.get(f"{url}/metrics", timeout=5).text
    assert f"early expiry of 3 host(s) on {USERS[0]}, {USERS[1]}" in service.log_tail()


def test_the_sweep_guard_holds_a_wave_of_early_expiries(service):
    url = service.url
    for ip in USERS:
        assert register(url, "users", ip, 8080).status_code == 200
    assert len(expire(url, list(USERS[1:]), idle_for=0).json()["expiring"]) == 3
    assert listed(url, "users") == list(USERS)  # three of four at once: held, all listed
    assert 'discovery_held_hosts{service="users"} 3' in requests.get(f"{url}/metrics", timeout=5).text


@pytest.mark.parametrize("body", [{}, {"ips": ["nope"]}, {"ips": ["127.0.0.1"], "idle_for": -1}])
def test_a_bad_expiry_request_is_refused(tmp_path, body):
    with DiscoveryService(tmp_path) as svc:
        resp = requests.post(f"{svc.url}/v1/expire", json=body, timeout=5)
        assert resp.status_code == 400 and "expected JSON" in resp.json()["error"]


def test_the_master_holds_when_a_large_share_of_the_fleet_is_lost_at_once(tmp_path):
    known = [f"m{i}" for i in range(10)]
    restart = discovery_presence.expire_lost(known[:6], known, {}, CONFIG, None, "test")
    assert restart["held"] and restart["expiring"] == [] and "6 of 10 minions lost at once" in restart["comment"]
    with DiscoveryService(tmp_path, ttl=60) as svc:
        assert register(svc.url, "users", "127.0.1.9", 8080).status_code == 200
        config = {**CONFIG, "urls": [f"http://127.0.0.1:{free_port()}", svc.url]}  # the first is down
        done = discovery_presence.expire_lost(["m9"], known, {"m9": ["127.0.1.9"]}, config, None, "test")
    assert not done["held"] and done["url"] == svc.url
    assert [(e["service"], e["ip"], e["port"]) for e in done["expiring"]] == [("users", "127.0.1.9", 8080)]
