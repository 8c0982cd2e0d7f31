"""
A registration outage (no host checks in for several TTLs) empties no service in a real Envoy:
the sweep guard keeps every expired host visible in EDS, so Envoy ends up with them all, even on
clusters without active health checks (where any host left out of an answer is dropped at once). A host that
dies alone is still cleaned after the TTL, single-host services included; when check-ins resume
the hold is released by itself; an operator can force a held sweep.
"""

import re
import threading
import time

import pytest
import requests

from tests.helpers.discovery import DiscoveryService, Envoy, RedisServer, register, wait_until

TTL = 3.0
SERVICES = {"web": 4, "api": 2, "solo": 1}
SEEN_WITHIN = 8.0


def hosts_of(service):
    return [(f"127.0.2.{i + 1}", 7000 + i) for i in range(SERVICES[service])] if service != "solo" else \
        [("127.0.3.1", 7100)]


class Heartbeats:
    def __init__(self, base_url):
        self.base_url, self.stop_event, self.paused = base_url, threading.Event(), threading.Event()
        self.hosts = {(s, ip, port) for s in SERVICES for ip, port in hosts_of(s)}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with requests.Session() as session:
            while not self.stop_event.wait(0.4):
                if not self.paused.is_set():
                    for service, ip, port in list(self.hosts):
                        register(self.base_url, service, ip, port, session=session)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


class Watch:
    """The smallest host count Envoy had per cluster, sampled every 50 ms."""

    def __init__(self, envoy):
        self.envoy, self.stop_event, self.minimum = envoy, threading.Event(), {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_event.wait(0.05):
            for service in SERVICES:
                count = len(self.envoy.cluster_hosts(service))
                self.minimum[service] = min(self.minimum.get(service, 10**9), count)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


def metric(url, sample):
    match = re.search(rf"^{re.escape(sample)} (\S+)$", requests.get(f"{url}/metrics", timeout=5).text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(params=["sqlite", "redis"])
def stack(request, tmp_path, envoy_bin):
    redis_server = RedisServer(tmp_path) if request.param == "redis" else None
    try:
        with DiscoveryService(tmp_path, ttl=TTL, sweep_interval=0.5, redis_url=redis_server and redis_server.url,
                              extra_args=["--workers", "2"]) as discovery, \
                Envoy(envoy_bin, tmp_path, discovery.port, list(SERVICES)) as envoy, \
                Heartbeats(discovery.url) as beats:
            wait_until(lambda: all(len(envoy.cluster_hosts(s)) == n for s, n in SERVICES.items()), SEEN_WITHIN,
                       "every host in Envoy")
            yield discovery, envoy, beats
    finally:
        if redis_server:
            redis_server.stop()


def test_a_registration_outage_empties_no_service_and_heals_itself(stack):
    discovery, envoy, beats = stack
    with Watch(envoy) as watch:
        beats.paused.set()  # nobody checks in any more: a registration outage
        time.sleep(3 * TTL)
        for service, count in SERVICES.items():
            assert len(envoy.cluster_hosts(service)) == count, service
        listed = requests.get(f"{discovery.url}/v1/registration/web", timeout=5).json()["hosts"]
        assert len(listed) == SERVICES["web"]
        assert metric(discovery.url, 'discovery_held_hosts{service="web"}') == SERVICES["web"]
        assert metric(discovery.url, 'discovery_held_hosts{service="solo"}') == 1
        assert metric(discovery.url, "discovery_sweeps_held_total") > 0
        assert metric(discovery.url, "discovery_swept_hosts_total") == 0
        assert re.search(rf"sweep guard: holding web: \d+ of its {SERVICES['web']} hosts stopped checking in .*"
                         r"nothing removed", discovery.log_tail(200_000)), discovery.log_tail()
        beats.paused.clear()  # check-ins resume: the hold is released, nothing was lost
        wait_until(lambda: metric(discovery.url, 'discovery_held_hosts{service="web"}') == 0, SEEN_WITHIN,
                   "the hold to be released")
        wait_until(lambda: "sweep guard: released web" in discovery.log_tail(200_000), SEEN_WITHIN,
                   "the release to be logged")
    # No service was ever emptied. The guard's bound: while a wave of expiries has not yet reached
    # more than half of a service, those first hosts are hidden (here the hosts' check-ins are
    # milliseconds apart, so Envoy almost never polls inside that window); a service's last host is
    # kept for the grace period, by which time the fleet-wide hold has started.
    assert set(watch.minimum) == set(SERVICES)
    assert all(watch.minimum[s] >= max(1, n - max(1, n // 2)) for s, n in SERVICES.items()), watch.minimum
    assert all(envoy.stat(f"cluster.{s}.update_empty") == 0 for s in SERVICES)


def test_a_host_dying_alone_is_still_cleaned(stack):
    discovery, envoy, beats = stack
    for service in ("web", "solo", "api"):
        ip, port = hosts_of(service)[0]
        beats.hosts.discard((service, ip, port))
        wait_until(lambda s=service, e=(ip, port): e not in envoy.cluster_hosts(s), TTL + SEEN_WITHIN,
                   f"the dead {service} host to leave Envoy")
        assert len(envoy.cluster_hosts(service)) == SERVICES[service] - 1
    wait_until(lambda: metric(discovery.url, "discovery_swept_hosts_total") == 3, 2 * TTL + SEEN_WITHIN,
               "the three dead hosts deleted after the grace period")
    assert metric(discovery.url, "discovery_sweeps_held_total") == 0


def test_a_held_service_is_released_by_an_operator(stack):
    discovery, envoy, beats = stack
    gone = [("web", ip, port) for ip, port in hosts_of("web")[:3]]  # 3 of 4 at once: more than half
    beats.hosts.difference_update(gone)
    wait_until(lambda: metric(discovery.url, 'discovery_held_hosts{service="web"}') == 3, TTL + SEEN_WITHIN,
               "the sweep of web to be held")
    assert len(envoy.cluster_hosts("web")) == 4
    resp = requests.post(f"{discovery.url}/v1/sweep/web?force=true", timeout=5)
    assert resp.status_code == 200 and resp.json()["services"][0]["deleted"] == 3, resp.text
    wait_until(lambda: len(envoy.cluster_hosts("web")) == 1, SEEN_WITHIN, "Envoy to drop the three dead hosts")
    assert metric(discovery.url, 'discovery_held_hosts{service="web"}') == 0
