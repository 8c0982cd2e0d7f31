"""
Horizontal scale: three stateless discovery instances (two worker processes each) share one real
Redis, and a real Envoy's discovery cluster lists all three. Under EDS load (Envoy's own polls
every 0.25-0.5 s on 20 clusters, plus Envoy-size requests from a load client), one instance is
SIGKILLed: Envoy sees 0 failed EDS fetches (``update_failure``, ``update_rejected``,
``update_empty``) and no cluster ever loses an endpoint.

The Envoy side is what the config generator renders for several instances (docs/discovery.md, the
retrying discovery cluster). Envoy's REST fetcher has no retry of its own (``RestApiFetcher`` sends
once through the cluster's async client and counts any failure), so the ``discovery`` cluster the
EDS configs name points at a loopback listener of the same Envoy whose route retries on another
instance (``previous_hosts``); the instances' cluster ejects a dead one by outlier detection. (An
internal listener would save the port, but xDS fetches run on Envoy's main thread, which has no
internal listeners: every fetch fails with "connect to previously closed peer".)
"""

import signal
import subprocess
import threading
import time

import pytest
import requests
import yaml

from tests.helpers.discovery import (
    DiscoveryService,
    Process,
    RedisServer,
    generated_discovery,
    register,
    wait_until,
)
from tests.helpers.eds_load import EdsLoad
from tests.helpers.net import free_port, wait_for

CLUSTERS = [f"svc-{i:02d}" for i in range(20)]
HOSTS_PER_CLUSTER = 3
INSTANCES = 3
REFRESH = "0.25s"
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
FAILURE_STATS = ("update_failure", "update_rejected", "update_empty")


def address(port, host="127.0.0.1"):
    return {"socket_address": {"address": host, "port_value": port}}


def typed(type_name, **fields):
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def eds_cluster(name, refresh=REFRESH):
    return {"name": name, "type": "EDS", "connect_timeout": "0.25s", "eds_cluster_config": {
        "service_name": name, "eds_config": {"resource_api_version": "V3", "api_config_source": {
            "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["discovery"],
            "refresh_delay": refresh, "request_timeout": "5s"}}}}


def bootstrap(admin_port, instance_ports, clusters, refresh=REFRESH, eds_extra=None, retry_port=None):
    """The discovery side as the config generator renders it, plus ``clusters`` polling every ``refresh``."""
    listeners, base = generated_discovery([f"127.0.0.1:{port}" for port in instance_ports], retry_port or free_port())
    return {
        "node": {"id": "scale-test", "cluster": "scale-test"},
        "admin": {"address": address(admin_port)},
        "static_resources": {"listeners": listeners,
                             "clusters": base + [{**eds_cluster(c, refresh), **(eds_extra or {})} for c in clusters]},
    }


class EnvoyProxy(Process):
    def __init__(self, envoy_bin, workdir, config):
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        path = workdir / f"envoy-{self.admin_port}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        super().__init__([envoy_bin, "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
                         workdir / f"envoy-{self.admin_port}.log")
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        wait_for(lambda: requests.get(f"{self.admin}/ready", timeout=2).status_code == 200, timeout=30,
                 what="envoy /ready")

    def stats(self, prefix):
        text = requests.get(f"{self.admin}/stats?filter=^{prefix}", timeout=5).text
        return {k: int(v) for k, _, v in (line.partition(": ") for line in text.splitlines()) if v.isdigit()}

    def host_counts(self):
        status = requests.get(f"{self.admin}/clusters?format=json", timeout=5).json()
        return {c["name"]: len(c.get("host_statuses", [])) for c in status["cluster_statuses"]}


class Watch:
    """Samples Envoy's /clusters every 50 ms: the smallest host count each EDS cluster ever had."""

    def __init__(self, envoy):
        self.envoy, self.stop_event, self.minimum, self.samples = envoy, threading.Event(), {}, 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_event.wait(0.05):
            counts = self.envoy.host_counts()
            self.samples += 1
            for name in CLUSTERS:
                self.minimum[name] = min(self.minimum.get(name, 10**9), counts.get(name, 0))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("discovery-scale")


@pytest.fixture(scope="module")
def redis_server(workdir):
    with RedisServer(workdir) as server:
        yield server


@pytest.fixture(scope="module")
def instances(workdir, redis_server):
    started = []
    try:
        for _ in range(INSTANCES):
            started.append(DiscoveryService(workdir, ttl=600, redis_url=redis_server.url,
                                            extra_args=["--workers", "2"]))
        yield started
    finally:
        for instance in started:
            instance.stop()


def failures(envoy):
    stats = envoy.stats("cluster.svc-")
    return {k: v for k, v in stats.items() if k.rsplit(".", 1)[-1] in FAILURE_STATS and v}


def test_the_discovery_cluster_shape_is_valid(envoy_bin, tmp_path):
    config = tmp_path / "shape.yaml"
    config.write_text(yaml.safe_dump(bootstrap(free_port(), [8080, 8081], ["users"])))
    check = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_instance_killed_under_eds_load_costs_envoy_no_fetch(envoy_bin, workdir, instances):
    # Registrations through different instances: they share Redis, so every instance answers all.
    for index, name in enumerate(CLUSTERS):
        for host in range(HOSTS_PER_CLUSTER):
            via = instances[(index + host) % INSTANCES]
            assert register(via.url, name, f"127.0.1.{host + 1}", 9000 + index).status_code == 200
    envoy = EnvoyProxy(envoy_bin, workdir, bootstrap(free_port(), [i.port for i in instances], CLUSTERS))
    try:
        wait_until(lambda: all(envoy.host_counts().get(c) == HOSTS_PER_CLUSTER for c in CLUSTERS), 30,
                   "every EDS cluster to get its hosts from discovery")
        assert failures(envoy) == {}
        with EdsLoad([i.url for i in instances], CLUSTERS) as load, Watch(envoy) as watch:
            time.sleep(2)
            attempts = sum(v for k, v in envoy.stats("cluster.svc-").items() if k.endswith(".update_attempt"))
            victim = instances[0]
            victim.stop(sig=signal.SIGKILL)
            assert not victim.alive()
            # Every cluster polls again many times while one instance in three is dead.
            time.sleep(6)
            after = sum(v for k, v in envoy.stats("cluster.svc-").items() if k.endswith(".update_attempt"))
            served_under_load = load.ok
        assert after - attempts >= len(CLUSTERS) * 10, (attempts, after)
        assert served_under_load > 0
        assert failures(envoy) == {}, failures(envoy)
        assert watch.samples > 50
        assert watch.minimum == {c: HOSTS_PER_CLUSTER for c in CLUSTERS}, watch.minimum
        routed = envoy.stats("cluster.discovery")
        # Fetches went through the retrying listener (priority 0), and some hit the dead instance
        # and were retried on another one.
        assert routed.get("cluster.discovery_instances.upstream_rq_retry", 0) > 0, routed
        assert routed.get("cluster.discovery_instances.outlier_detection.ejections_enforced_total", 0) >= 1, routed
        print("fetches during the kill:", after - attempts, "retries:", routed.get(
            "cluster.discovery_instances.upstream_rq_retry"), "load ok:", served_under_load, "load errors:",
            load.errors)
    finally:
        envoy.stop()


def test_the_documented_multi_instance_shape_is_what_the_generator_renders(envoy_bin, tmp_path):
    from tests.helpers.discovery import REPO

    doc = (REPO / "docs" / "discovery.md").read_text()
    block = doc.split("<!-- envoy-validated-discovery-ha -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    shape = yaml.safe_load(block)
    listeners, clusters = generated_discovery([f"disc-{i}.internal.example:8080" for i in (1, 2, 3)], 9902)
    assert shape == {"listeners": listeners, "clusters": clusters}
    users = eds_cluster("users", refresh="20s")
    config = tmp_path / "documented-ha.yaml"
    config.write_text(yaml.safe_dump({"node": {"id": "doc-check", "cluster": "doc-check"}, "static_resources": {
        "listeners": shape["listeners"], "clusters": shape["clusters"] + [users]}}))
    check = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
