"""
The discovery service under load, with 10,000 hosts across 500 services, on SQLite and on a real
Redis: registrations/s (first check-ins and heartbeats) and EDS responses/s, each as a ratio of a
trivial ``GET /healthcheck`` rate measured on the same server, same client, same concurrency.
Then a real Envoy (refresh_delay 1 s) polls the service: time from a registration to the endpoint
showing in Envoy's admin ``/clusters``, against the refresh delay.

The client (aiohttp, one process) and the server (another process) share this machine's cores,
so figures are for the pair; the ratios are what compare across machines.
"""

import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import requests

from tests.helpers.discovery import DiscoveryService, Envoy, RedisServer, register

SERVICES, HOSTS = 500, 10_000
CONCURRENCY = 16
WINDOW_S = 5.0
REFRESH_S = 1.0
LATENCY_TRIALS = 10
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# Fleet arithmetic behind the goals: 10,000 hosts checking in once a minute; 1,000 Envoys
# polling 10 clusters each every ~30 s.
FLEET_REG_RATE = HOSTS / 60
FLEET_EDS_RATE = 1000 * 10 / 30


def service_name(index):
    return f"svc-{index:03d}"


def host_forms():
    """10,000 registrations: 20 per service, 3 azs, IPs in 10.0.0.0/16."""
    forms = []
    for index in range(HOSTS):
        service = service_name(index % SERVICES)
        tags = {"az": f"us-east-1{'abc'[index % 3]}", "region": "us-east-1", "instance_id": f"i-{index:05d}"}
        forms.append((service, {"ip": f"10.0.{index // 250}.{index % 250 + 1}", "port": "8080",
                                "revision": "r1", "service_repo_name": service, "tags": json.dumps(tags)}))
    return forms


def envoy_like_request(service):
    """A DiscoveryRequest the size Envoy 1.40 sends (~77 KB: the node lists every extension)."""
    extensions = [{"name": f"envoy.extension.{i:04d}.some_filter_name", "category": "envoy.filters.http"}
                  for i in range(1000)]
    return json.dumps({"version_info": "", "node": {"id": "bench", "cluster": "bench", "extensions": extensions},
                       "resource_names": [service], "type_url": CLA}).encode()


async def sustained(make_request, seconds=WINDOW_S, concurrency=CONCURRENCY):
    """Requests/s over ``seconds`` from ``concurrency`` keep-alive workers; any non-200 is an error."""
    counts = {"ok": 0, "bad": 0}
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def worker(seed):
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                async with make_request(session, rng) as resp:
                    await resp.read()
                    counts["ok" if resp.status == 200 else "bad"] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    if counts["bad"]:
        raise RuntimeError(f"{counts['bad']} requests failed during the benchmark")
    return counts["ok"] / elapsed


async def register_all(base, forms):
    """First check-in of every host, as fast as CONCURRENCY workers go: (registrations/s)."""
    queue = list(forms)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            while queue:
                service, form = queue.pop()
                async with session.post(f"{base}/v1/registration/{service}", data=form) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"registration failed: {resp.status} {await resp.text()}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return len(forms) / (time.monotonic() - started)


def throughput_rows(base, backend):
    forms = host_forms()
    eds_bodies = [envoy_like_request(service_name(i)) for i in range(SERVICES)]

    def healthcheck(session, rng):
        return session.get(f"{base}/healthcheck")

    def heartbeat(session, rng):
        service, form = forms[rng.randrange(HOSTS)]
        return session.post(f"{base}/v1/registration/{service}", data=form)

    def eds_poll(session, rng):
        return session.post(f"{base}/v3/discovery:endpoints", data=eds_bodies[rng.randrange(SERVICES)],
                            headers={"Content-Type": "application/json"})

    first = asyncio.run(register_all(base, forms))
    listed = requests.get(f"{base}/v1/registration/{service_name(7)}", timeout=5).json()["hosts"]
    assert len(listed) == HOSTS // SERVICES, len(listed)
    baseline = asyncio.run(sustained(healthcheck))
    beats = asyncio.run(sustained(heartbeat))
    polls = asyncio.run(sustained(eds_poll))
    note = f"{HOSTS} hosts / {SERVICES} services, {CONCURRENCY} connections, {WINDOW_S:g}s windows"
    return [
        {"metric": f"{backend}: GET /healthcheck (baseline)", "value": baseline, "unit": "req/s", "note": note},
        {"metric": f"{backend}: first registrations", "value": first, "unit": "req/s", "baseline": baseline,
         "ratio": first / baseline, "goal": f">= {FLEET_REG_RATE:.0f}/s (10k hosts each minute)"},
        {"metric": f"{backend}: heartbeat registrations", "value": beats, "unit": "req/s", "baseline": baseline,
         "ratio": beats / baseline, "goal": f">= {FLEET_REG_RATE:.0f}/s (10k hosts each minute)"},
        {"metric": f"{backend}: EDS responses (77 KB Envoy-size requests, 20 hosts each)", "value": polls,
         "unit": "req/s", "baseline": baseline, "ratio": polls / baseline,
         "goal": f">= {FLEET_EDS_RATE:.0f}/s (1k Envoys x 10 clusters / 30 s)"},
    ]


def latency_rows(base, port, workdir, backend):
    """Registration -> visible in Envoy's /clusters, LATENCY_TRIALS times at random instants."""
    from envoy_bundle.builder import default_envoy_path

    service = service_name(11)
    samples = []
    with Envoy(str(default_envoy_path()), workdir, port, [service], refresh_delay=f"{REFRESH_S:g}s") as envoy:
        deadline = time.monotonic() + 30
        while len(envoy.cluster_hosts(service)) < HOSTS // SERVICES and time.monotonic() < deadline:
            time.sleep(0.05)
        for trial in range(LATENCY_TRIALS):
            time.sleep(random.uniform(0, REFRESH_S))
            endpoint = ("10.200.0.1", 20000 + trial)
            started = time.monotonic()
            register(base, service, *endpoint)
            while endpoint not in envoy.cluster_hosts(service):
                if time.monotonic() - started > 10 * REFRESH_S:
                    raise RuntimeError(f"{endpoint} never showed in Envoy")
                time.sleep(0.01)
            samples.append(time.monotonic() - started)
    median, worst = statistics.median(samples), max(samples)
    note = f"Envoy polls every refresh_delay + jitter in [0, refresh_delay); {LATENCY_TRIALS} trials"
    return [
        {"metric": f"{backend}: registration -> Envoy /clusters, median", "value": median, "unit": "s",
         "baseline": REFRESH_S, "ratio": median / REFRESH_S, "goal": "<= 2 x refresh_delay", "note": note},
        {"metric": f"{backend}: registration -> Envoy /clusters, max", "value": worst, "unit": "s",
         "baseline": REFRESH_S, "ratio": worst / REFRESH_S, "goal": "<= 2 x refresh_delay"},
    ]


def run():
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir) as redis_server:
            for backend, redis_url in (("sqlite", None), ("redis", redis_server.url)):
                with DiscoveryService(workdir, ttl=600, redis_url=redis_url) as service:
                    rows += throughput_rows(service.url, backend)
                    rows += latency_rows(service.url, service.port, workdir, backend)
    return rows
