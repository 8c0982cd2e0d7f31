"""
The discovery service under load, with 10,000 hosts across 500 services, on SQLite and on a real
Redis, with 1 and 2 worker processes: registrations/s (first check-ins and heartbeats) and EDS
responses/s (full answers, and polls that already hold the current version: 304), each as a ratio
of a trivial ``GET /healthcheck`` rate measured on the same server, same client, same concurrency.
Then EDS open-loop at the fleet's rate (3,333/s offered, latency from the scheduled send time).
Then a real Envoy (refresh_delay 1 s) polls the service: time from a registration to the endpoint
showing in Envoy's admin ``/clusters``, against the refresh delay.

The client (aiohttp, one process) and the server (another process) share this machine's cores,
so figures are for the pair; the ratios are what compare across machines.
"""

import asyncio
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import requests

from tests.helpers.discovery import DiscoveryService, Envoy, RedisServer, register

SERVICES, HOSTS = 500, 10_000
CONCURRENCY = 16
CLIENT_PROCS = 2  # the load client is two processes (one cannot keep up with two server workers)
WORKERS = 2  # this machine's cores
WINDOW_S = 5.0
REFRESH_S = 1.0
LATENCY_TRIALS = 10
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# Fleet arithmetic behind the goals: 10,000 hosts checking in once a minute, each host's Envoy
# polling about 10 clusters every ~30 s.
FLEET_REG_RATE = HOSTS / 60
FLEET_EDS_RATE = 3400  # 10,000 x 10 / 30 s = 3,333/s, rounded up as in issue 14


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


def envoy_like_request(service, version=""):
    """A DiscoveryRequest the size and field order Envoy 1.40 sends (~77 KB: the node lists every
    extension; version_info first, the names after the node; an empty version is left out)."""
    extensions = [{"name": f"envoy.extension.{i:04d}.some_filter_name", "category": "envoy.filters.http"}
                  for i in range(1000)]
    head = {"version_info": version} if version else {}
    return json.dumps({**head, "node": {"id": "bench", "cluster": "bench", "extensions": extensions},
                       "resource_names": [service], "type_url": CLA}, separators=(",", ":")).encode()


async def sustained(make_request, seconds=WINDOW_S, concurrency=CONCURRENCY, ok=(200,)):
    """Requests/s over ``seconds`` from ``concurrency`` keep-alive workers; any other status is an error."""
    counts = {"ok": 0, "bad": 0}
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def worker(seed):
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                async with make_request(session, rng) as resp:
                    await resp.read()
                    counts["ok" if resp.status in ok else "bad"] += 1

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


def make_request(kind, base, versions):
    """A request factory by name (picklable across the client processes)."""
    forms = host_forms()
    bodies = [envoy_like_request(service_name(i)) for i in range(SERVICES)]
    current = [envoy_like_request(service_name(i), versions.get(service_name(i), "")) for i in range(SERVICES)]
    headers = {"Content-Type": "application/json"}

    def healthcheck(session, rng):
        return session.get(f"{base}/healthcheck")

    def heartbeat(session, rng):
        service, form = forms[rng.randrange(HOSTS)]
        return session.post(f"{base}/v1/registration/{service}", data=form)

    def eds_full(session, rng):
        return session.post(f"{base}/v3/discovery:endpoints", data=bodies[rng.randrange(SERVICES)], headers=headers)

    def eds_unchanged(session, rng):
        return session.post(f"{base}/v3/discovery:endpoints", data=current[rng.randrange(SERVICES)], headers=headers)

    return {"healthcheck": healthcheck, "heartbeat": heartbeat, "eds_full": eds_full,
            "eds_unchanged": eds_unchanged}[kind]


def _closed_loop(kind, base, versions, concurrency, seed):
    random.seed(seed)
    return asyncio.run(sustained(make_request(kind, base, versions), concurrency=concurrency, ok=(200, 304)))


def closed_loop(kind, base, versions):
    """Requests/s from CLIENT_PROCS processes with CONCURRENCY keep-alive connections in all."""
    with ProcessPoolExecutor(CLIENT_PROCS, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_closed_loop, kind, base, versions, CONCURRENCY // CLIENT_PROCS, i)
                   for i in range(CLIENT_PROCS)]
        return sum(f.result() for f in futures)


async def open_loop_run(make, rate, seconds, connections):
    """Sends at a fixed rate whatever the answers' pace; latency counts from the scheduled send
    time, so a server falling behind shows as latency, not as a lower offered rate."""
    latencies, failed = [], 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        rng = random.Random()
        start = time.monotonic()
        total = int(rate * seconds)
        tasks = []

        async def one(at):
            nonlocal failed
            try:
                async with make(session, rng) as resp:
                    await resp.read()
                    if resp.status not in (200, 304):
                        failed += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failed += 1
            latencies.append(time.monotonic() - at)

        for i in range(total):
            at = start + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    return latencies, failed, elapsed


def _open_loop(kind, base, versions, rate, seconds, connections):
    return asyncio.run(open_loop_run(make_request(kind, base, versions), rate, seconds, connections))


def open_loop(kind, base, versions, rate, seconds=WINDOW_S):
    with ProcessPoolExecutor(CLIENT_PROCS, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_open_loop, kind, base, versions, rate / CLIENT_PROCS, seconds, 32)
                   for _ in range(CLIENT_PROCS)]
        results = [f.result() for f in futures]
    latencies = sorted(x for lat, _, _ in results for x in lat)
    failed = sum(f for _, f, _ in results)
    elapsed = max(e for _, _, e in results)
    return len(latencies) / elapsed, failed, latencies


def percentile(ordered, pct):
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def current_versions(base):
    out = {}
    with requests.Session() as session:
        for i in range(SERVICES):
            name = service_name(i)
            resp = session.post(f"{base}/v3/discovery:endpoints", json={"resource_names": [name]}, timeout=5)
            out[name] = resp.json()["version_info"]
    return out


def throughput_rows(base, backend, workers=1):
    forms = host_forms()
    label = f"{backend}, {workers} worker{'s' if workers > 1 else ''}"
    first = asyncio.run(register_all(base, forms))
    listed = requests.get(f"{base}/v1/registration/{service_name(7)}", timeout=5).json()["hosts"]
    assert len(listed) == HOSTS // SERVICES, len(listed)
    versions = current_versions(base)
    baseline = closed_loop("healthcheck", base, versions)
    beats = closed_loop("heartbeat", base, versions)
    full = closed_loop("eds_full", base, versions)
    unchanged = closed_loop("eds_unchanged", base, versions)
    rate, failed, latencies = open_loop("eds_full", base, versions, FLEET_EDS_RATE)
    note = (f"{HOSTS} hosts / {SERVICES} services, {CLIENT_PROCS} client processes x "
            f"{CONCURRENCY // CLIENT_PROCS} connections, {WINDOW_S:g}s windows")
    eds_goal = f">= {FLEET_EDS_RATE:.0f}/s (10k Envoys x 10 clusters / 30 s)"
    rows = [
        {"metric": f"{label}: GET /healthcheck (baseline)", "value": baseline, "unit": "req/s", "note": note},
        {"metric": f"{label}: first registrations", "value": first, "unit": "req/s", "baseline": baseline,
         "ratio": first / baseline, "goal": f">= {FLEET_REG_RATE:.0f}/s (10k hosts each minute)",
         "note": f"one client process, {CONCURRENCY} connections"},
        {"metric": f"{label}: heartbeat registrations", "value": beats, "unit": "req/s", "baseline": baseline,
         "ratio": beats / baseline, "goal": f">= {FLEET_REG_RATE:.0f}/s (10k hosts each minute)"},
        {"metric": f"{label}: EDS full answers (77 KB Envoy-size requests, 20 hosts each)", "value": full,
         "unit": "req/s", "baseline": baseline, "ratio": full / baseline, "goal": eds_goal},
        {"metric": f"{label}: EDS unchanged version (304)", "value": unchanged, "unit": "req/s",
         "baseline": baseline, "ratio": unchanged / baseline, "goal": eds_goal},
        {"metric": f"{label}: EDS open loop at {FLEET_EDS_RATE:.0f}/s offered: achieved", "value": rate,
         "unit": "req/s", "baseline": FLEET_EDS_RATE, "ratio": rate / FLEET_EDS_RATE, "goal": "ratio >= 0.98, 0 failed",
         "note": f"{failed} failed"},
        {"metric": f"{label}: EDS open loop p50 latency", "value": percentile(latencies, 50) * 1000, "unit": "ms"},
        {"metric": f"{label}: EDS open loop p99 latency", "value": percentile(latencies, 99) * 1000, "unit": "ms"},
    ]
    return rows


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
                for workers in (1, WORKERS):
                    redis_server_flush(redis_server)
                    with DiscoveryService(workdir, ttl=600, redis_url=redis_url, extra_args=["--workers", str(workers)],
                                          sqlite_path=workdir / f"bench-{workers}.sqlite3") as service:
                        rows += throughput_rows(service.url, backend, workers)
                        if workers == 1:
                            rows += latency_rows(service.url, service.port, workdir, backend)
    return rows


def redis_server_flush(server):
    import redis

    redis.Redis(port=server.port).flushall()
