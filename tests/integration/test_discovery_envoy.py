"""
The discovery service with a real Redis and a real Envoy polling it over v3 REST EDS
(refresh_delay 1 s, so Envoy asks every 1-2 s): endpoints appear and disappear without a
restart, and Envoy keeps serving on its last endpoints when the discovery service is gone.
The tests run in file order and share one Envoy; the last one stops the discovery service.
"""

import re
import sys
import threading

import pytest
import requests

from tests.helpers.discovery import DiscoveryService, Envoy, Process, RedisServer, register, wait_until
from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, wait_for

TTL = 3.0
REFRESH_S = 1.0
# Envoy polls every refresh_delay + jitter (< 2 x refresh_delay); allow a few polls more.
SEEN_WITHIN = 4 * 2 * REFRESH_S
FOO_HOSTS = [("127.0.0.2", "us-east-1a", 10), ("127.0.0.3", "us-east-1b", 20), ("127.0.0.4", "us-east-1c", 30)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("discovery-envoy")


@pytest.fixture(scope="module")
def redis_server(workdir):
    with RedisServer(workdir) as server:
        yield server


@pytest.fixture(scope="module")
def discovery(workdir, redis_server):
    with DiscoveryService(workdir, ttl=TTL, redis_url=redis_server.url, sweep_interval=0.5) as service:
        yield service


@pytest.fixture(scope="module")
def upstreams(workdir):
    """One tiny app per foo host (ip, port) plus two bar instances sharing 127.0.0.1."""
    apps = {}
    for ip, _, _ in FOO_HOSTS:
        apps[(ip, free_port(ip))] = f"foo-{ip}"
    for index in (1, 2):
        apps[("127.0.0.1", free_port())] = f"bar-{index}"
    procs = [Process([sys.executable, "-m", "tests.helpers.app", "--host", ip, "--port", str(port), "--name", name],
                     workdir / f"app-{name}.log") for (ip, port), name in apps.items()]
    for (ip, port), _ in apps.items():
        wait_for(lambda ip=ip, port=port: requests.get(f"http://{ip}:{port}/healthcheck", timeout=1).ok,
                 timeout=20, what=f"app on {ip}:{port}")
    yield apps
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def envoy(envoy_bin, workdir, discovery):
    with Envoy(envoy_bin, workdir, discovery.port, ["foo", "bar"], refresh_delay=f"{REFRESH_S:g}s") as proxy:
        yield proxy


class Heartbeats:
    """Re-registers a set of hosts every 0.5 s (a TTL of 3 s), like each host's scheduled check-in."""

    def __init__(self, base_url):
        self.base_url, self.hosts, self.stop_event = base_url, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with requests.Session() as session:
            while not self.stop_event.wait(0.5):
                for (service, ip, port), tags in list(self.hosts.items()):
                    try:
                        register(self.base_url, service, ip, port, session=session, **tags)
                    except requests.RequestException:
                        pass  # the discovery service is down on purpose in the last test

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def heartbeats(discovery):
    with Heartbeats(discovery.url) as beats:
        yield beats


def metric(service, sample):
    text = requests.get(f"{service.url}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def foo_endpoints(upstreams):
    return {(ip, port) for (ip, port), name in upstreams.items() if name.startswith("foo-")}


def test_three_hosts_appear_in_envoy_without_restart(envoy, discovery, upstreams, heartbeats):
    before = envoy.server_info()
    assert envoy.cluster_hosts("foo") == {}
    weights = {}
    for (ip, port) in foo_endpoints(upstreams):
        _, az, weight = next(h for h in FOO_HOSTS if h[0] == ip)
        tags = {"az": az, "instance_id": f"i-{ip}", "load_balancing_weight": weight, "canary": ip == "127.0.0.3"}
        assert register(discovery.url, "foo", ip, port, **tags).status_code == 200
        heartbeats.hosts[("foo", ip, port)] = tags
        weights[(ip, port)] = (az, weight)

    hosts = wait_until(lambda: (h := envoy.cluster_hosts("foo")) and len(h) == 3 and h,
                       SEEN_WITHIN, "3 foo hosts in Envoy /clusters")
    assert set(hosts) == set(weights)
    for endpoint, (az, weight) in weights.items():
        assert hosts[endpoint]["weight"] == weight
        assert hosts[endpoint]["locality"] == {"region": "us-east-1", "zone": az}
    assert envoy.stat("cluster.foo.update_rejected") == 0
    after = envoy.server_info()
    assert after["command_line_options"]["restart_epoch"] == before["command_line_options"]["restart_epoch"] == 0
    assert int(after["uptime_current_epoch"].rstrip("s")) >= int(before["uptime_current_epoch"].rstrip("s"))
    assert envoy.alive()


def test_unchanged_answers_keep_their_version(envoy, discovery):
    """Heartbeats keep flowing, yet the version stays: Envoy's polls carry the version it holds and
    get 304 Not Modified (its REST fetcher keeps its config: no update, no rebuild)."""
    body = {"resource_names": ["foo"], "type_url": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"}
    first = requests.post(f"{discovery.url}/v3/discovery:endpoints", json=body, timeout=5).json()
    wait_until(lambda: envoy.stat_text("cluster.foo.version_text") == f'"{first["version_info"]}"', SEEN_WITHIN,
               "Envoy to hold the current version")
    attempts, successes = envoy.stat("cluster.foo.update_attempt"), envoy.stat("cluster.foo.update_success")
    not_modified = metric(discovery, 'discovery_eds_requests_total{result="not_modified"}')
    wait_until(lambda: envoy.stat("cluster.foo.update_attempt") >= attempts + 3, SEEN_WITHIN,
               "three more EDS polls with an unchanged answer")
    second = requests.post(f"{discovery.url}/v3/discovery:endpoints", json=body, timeout=5).json()
    assert first["version_info"] == second["version_info"]
    assert envoy.stat_text("cluster.foo.version_text") == f'"{first["version_info"]}"'
    assert envoy.stat("cluster.foo.update_success") == successes
    assert envoy.stat("cluster.foo.update_failure") == 0 and envoy.stat("cluster.foo.update_rejected") == 0
    assert metric(discovery, 'discovery_eds_requests_total{result="not_modified"}') >= not_modified + 2
    # Asked with that version, the service answers 304 and no body.
    resp = requests.post(f"{discovery.url}/v3/discovery:endpoints", json={**body, "version_info": first["version_info"]},
                         timeout=5)
    assert resp.status_code == 304 and resp.content == b""


def test_traffic_reaches_all_three_hosts(envoy):
    seen = set()
    with requests.Session() as session:
        for _ in range(60):
            resp = session.get(f"http://127.0.0.1:{envoy.listener_port}/", headers={"Host": "foo"}, timeout=5)
            assert resp.status_code == 200
            seen.add(resp.headers["x-upstream"])
    assert seen == {"foo-127.0.0.2", "foo-127.0.0.3", "foo-127.0.0.4"}


def test_two_instances_on_one_ip(envoy, discovery, upstreams, heartbeats):
    bar = {(ip, port) for (ip, port), name in upstreams.items() if name.startswith("bar-")}
    for ip, port in bar:
        assert register(discovery.url, "bar", ip, port, instance_id="i-shared").status_code == 200
        heartbeats.hosts[("bar", ip, port)] = {"instance_id": "i-shared"}
    wait_until(lambda: set(envoy.cluster_hosts("bar")) == bar, SEEN_WITHIN, "both bar instances in Envoy")
    listed = requests.get(f"{discovery.url}/v1/registration/bar", timeout=5).json()["hosts"]
    assert sorted((h["ip_address"], h["port"]) for h in listed) == sorted(bar)


def test_bad_registrations_are_refused_and_never_reach_envoy(envoy, discovery):
    bad = [{"ip": "127.0.0.300"}, {"port": "0"}, {"tags": "{not json"}, {"tags": '{"az": "a"}'}]
    for override in bad:
        form = {"ip": "127.0.0.9", "port": "9999", "revision": "r1", "service_repo_name": "foo",
                "tags": '{"az": "a", "region": "r", "instance_id": "i"}', **override}
        resp = requests.post(f"{discovery.url}/v1/registration/foo", data=form, timeout=5)
        assert resp.status_code == 400, (override, resp.text)
    polls = envoy.stat("cluster.foo.update_attempt")
    wait_until(lambda: envoy.stat("cluster.foo.update_attempt") >= polls + 2, SEEN_WITHIN, "two more polls")
    assert ("127.0.0.9", 9999) not in envoy.cluster_hosts("foo")
    assert len(envoy.cluster_hosts("foo")) == 3


def test_host_that_stops_checking_in_is_gone_after_ttl(envoy, discovery, upstreams, heartbeats):
    gone = ("127.0.0.4", next(p for (ip, p) in upstreams if ip == "127.0.0.4"))
    del heartbeats.hosts[("foo", *gone)]
    wait_until(lambda: gone not in envoy.cluster_hosts("foo"), TTL + SEEN_WITHIN,
               "the silent host to leave Envoy after the TTL")
    assert len(envoy.cluster_hosts("foo")) == 2
    listed = requests.get(f"{discovery.url}/v1/registration/foo", timeout=5).json()["hosts"]
    assert gone not in {(h["ip_address"], h["port"]) for h in listed}


def test_envoy_keeps_last_endpoints_when_discovery_is_down(envoy, discovery, upstreams):
    expected = {"foo-127.0.0.2", "foo-127.0.0.3"}
    discovery.stop()
    failures = envoy.stat("cluster.foo.update_failure")
    # Several polls fail (connection refused) and Envoy must not drop what it had.
    wait_until(lambda: envoy.stat("cluster.foo.update_failure") >= failures + 2, SEEN_WITHIN,
               "EDS polls failing while discovery is down")
    assert len(envoy.cluster_hosts("foo")) == 2
    with LoadRunner(f"http://127.0.0.1:{envoy.listener_port}/", connections=4, headers={"Host": "foo"},
                    max_seconds=30) as load:
        wait_until(lambda: load.result.ok >= 300, 20, "300 requests through Envoy")
    assert load.result.failed == 0, load.result.errors[:5]
    assert envoy.stat("cluster.foo.upstream_rq_200") > 0
    seen = set()
    with requests.Session() as session:
        for _ in range(40):
            seen.add(session.get(f"http://127.0.0.1:{envoy.listener_port}/", headers={"Host": "foo"},
                                 timeout=5).headers["x-upstream"])
    assert seen == expected
