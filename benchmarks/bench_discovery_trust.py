"""
Discovery with trust and at fleet scale (issue 14), on a real Redis, 10,000 hosts across 500
services (the fleet of ``bench_discovery``):

- registrations/s with ``--auth enforce`` against ``--auth off``, same server build, same Redis,
  same client, and the very same requests (each carries its host's token; ``off`` ignores it),
  measured alternately in two rounds so that the machine's drift hits both modes alike. The tokens'
  addresses are pinned (``ipsrc: pillar``) and the server runs ``--no-auth-peer-check``: 10,000
  hosts cannot each send from their own address here. Everything else of the check runs (parse,
  key look-up, HMAC-SHA256, expiry, service and address against the claims); the peer check it
  leaves out is one address comparison.
- EDS responses/s (Envoy-size 77 KB requests, full answers) from one instance with one worker,
  one instance with two workers, and three stateless instances of one worker each sharing the
  Redis (requests spread over them, as Envoys listing every instance do): closed loop (as fast as
  answered), and open loop at the fleet's rate (3,400/s offered: 10,000 Envoys x 10 clusters /
  30 s) with its failures and p99 latency. Ratios are to the one-instance-one-worker figure of the
  same run.

The load client (two processes) shares this machine's two cores with the servers, so figures are
for the pair; several workers or instances compete for the same cores.
"""

import asyncio
import contextlib
import multiprocessing
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import requests
from envoy_formula import discovery_tokens

from benchmarks.bench_discovery import (
    CLIENT_PROCS,
    CONCURRENCY,
    FLEET_EDS_RATE,
    FLEET_REG_RATE,
    HOSTS,
    SERVICES,
    WINDOW_S,
    envoy_like_request,
    host_forms,
    open_loop_run,
    percentile,
    redis_server_flush,
    service_name,
    sustained,
)
from tests.helpers.discovery import DiscoveryService, RedisServer

KEY = ("bench1", "k" * 43)
ROUNDS = 2
INSTANCES = 3


def host_tokens(forms):
    """One token per host, as the master's ext_pillar would issue it (addresses pinned in pillar)."""
    exp = time.time() + 86400
    return [discovery_tokens.issue(*KEY, discovery_tokens.host_claims(f"host-{i:05d}", [service], [form["ip"]],
                                                                      "pillar", exp))
            for i, (service, form) in enumerate(forms)]


# Set in the parent before the client processes fork (10,000 tokens are not sent through pickles).
FORMS = host_forms()
TOKENS: list[str] = []


def make_request(kind, bases):
    bodies = [envoy_like_request(service_name(i)) for i in range(SERVICES)]
    json_headers = {"Content-Type": "application/json"}

    def heartbeat(session, rng):
        index = rng.randrange(HOSTS)
        service, form = FORMS[index]
        return session.post(f"{rng.choice(bases)}/v1/registration/{service}", data=form,
                            headers={"Authorization": f"Bearer {TOKENS[index]}"})

    def eds_full(session, rng):
        return session.post(f"{rng.choice(bases)}/v3/discovery:endpoints", data=bodies[rng.randrange(SERVICES)],
                            headers=json_headers)

    def healthcheck(session, rng):
        return session.get(f"{rng.choice(bases)}/healthcheck")

    return {"heartbeat": heartbeat, "eds_full": eds_full, "healthcheck": healthcheck}[kind]


def _closed_loop(kind, bases, concurrency, seed):
    random.seed(seed)
    return asyncio.run(sustained(make_request(kind, bases), concurrency=concurrency, ok=(200, 304)))


def closed_loop(kind, bases):
    with ProcessPoolExecutor(CLIENT_PROCS, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_closed_loop, kind, bases, CONCURRENCY // CLIENT_PROCS, i) for i in range(CLIENT_PROCS)]
        return sum(f.result() for f in futures)


def _open_loop(bases, rate, seconds):
    return asyncio.run(open_loop_run(make_request("eds_full", bases), rate, seconds, 32))


def open_loop(bases, rate=FLEET_EDS_RATE, seconds=WINDOW_S):
    with ProcessPoolExecutor(CLIENT_PROCS, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_open_loop, bases, rate / CLIENT_PROCS, seconds) for _ in range(CLIENT_PROCS)]
        results = [f.result() for f in futures]
    latencies = sorted(x for lat, _, _ in results for x in lat)
    return len(latencies) / max(e for _, _, e in results), sum(f for _, f, _ in results), latencies


async def register_all(base):
    """First check-in of every host, with its token, as fast as CONCURRENCY workers go."""
    queue = list(range(HOSTS))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def worker():
            while queue:
                index = queue.pop()
                service, form = FORMS[index]
                async with session.post(f"{base}/v1/registration/{service}", data=form,
                                        headers={"Authorization": f"Bearer {TOKENS[index]}"}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"registration failed: {resp.status} {await resp.text()}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return HOSTS / (time.monotonic() - started)


def metric(base, line_start):
    for line in requests.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start):
            return float(line.rpartition(" ")[2])
    return 0.0


def auth_rows(workdir, redis_server, keys):
    runs = {"off": [], "enforce": []}
    for _ in range(ROUNDS):
        for mode in runs:
            redis_server_flush(redis_server)
            args = ["--auth", mode, "--auth-keys-file", str(keys), "--no-auth-peer-check"] if mode != "off" else []
            with DiscoveryService(workdir, ttl=600, redis_url=redis_server.url, extra_args=args) as service:
                first = asyncio.run(register_all(service.url))
                beats = closed_loop("heartbeat", [service.url])
                if mode == "enforce":  # every request was checked, none refused
                    verified = metric(service.url, "discovery_auth_verified_total")
                    if verified < HOSTS or metric(service.url, 'discovery_registrations_total{result="forbidden"}'):
                        raise RuntimeError(f"enforce: {verified} verified, some refused: {service.log_tail()}")
            runs[mode].append((first, beats))
    off_first, off_beats = (statistics.mean(r[i] for r in runs["off"]) for i in (0, 1))
    on_first, on_beats = (statistics.mean(r[i] for r in runs["enforce"]) for i in (0, 1))
    note = (f"Redis, 1 worker, {HOSTS} hosts / {SERVICES} services, mean of {ROUNDS} alternating rounds "
            f"(off: {', '.join(f'{b:,.0f}' for _, b in runs['off'])}; enforce: "
            f"{', '.join(f'{b:,.0f}' for _, b in runs['enforce'])}); same requests, each with its token; "
            "--no-auth-peer-check")
    goal = f">= {FLEET_REG_RATE:.0f}/s (10k hosts each minute)"
    return [
        {"metric": "auth off: first registrations", "value": off_first, "unit": "req/s", "goal": goal},
        {"metric": "auth enforce: first registrations", "value": on_first, "unit": "req/s", "baseline": off_first,
         "ratio": on_first / off_first, "goal": goal},
        {"metric": "auth off: heartbeat registrations", "value": off_beats, "unit": "req/s", "goal": goal,
         "note": note},
        {"metric": "auth enforce: heartbeat registrations", "value": on_beats, "unit": "req/s",
         "baseline": off_beats, "ratio": on_beats / off_beats, "goal": goal},
    ]


def eds_rows(workdir, redis_server):
    layouts = [("1 instance x 1 worker", 1, 1), ("1 instance x 2 workers", 1, 2),
               (f"{INSTANCES} instances x 1 worker", INSTANCES, 1)]
    rows, single = [], None
    redis_server_flush(redis_server)
    for label, instances, workers in layouts:
        with contextlib.ExitStack() as stack:
            services = [stack.enter_context(DiscoveryService(workdir, ttl=600, redis_url=redis_server.url,
                                                             extra_args=["--workers", str(workers)]))
                        for _ in range(instances)]
            bases = [s.url for s in services]
            if single is None:  # the hosts, once (the store is shared by every layout)
                asyncio.run(register_all(bases[0]))
            for base in bases:  # every instance has seen every service before the windows
                for i in range(SERVICES):
                    requests.post(f"{base}/v3/discovery:endpoints", data=envoy_like_request(service_name(i)), timeout=5)
            full = closed_loop("eds_full", bases)
            rate, failed, latencies = open_loop(bases)
        single = single or full
        rows += [
            {"metric": f"EDS full answers, {label}", "value": full, "unit": "req/s", "baseline": single,
             "ratio": full / single, "goal": f">= {FLEET_EDS_RATE}/s",
             "note": f"77 KB Envoy-size requests; {CLIENT_PROCS} client processes x {CONCURRENCY // CLIENT_PROCS} "
                     f"connections, {WINDOW_S:g}s"},
            {"metric": f"EDS open loop at {FLEET_EDS_RATE}/s offered, {label}: achieved", "value": rate,
             "unit": "req/s", "baseline": FLEET_EDS_RATE, "ratio": rate / FLEET_EDS_RATE,
             "goal": "ratio >= 0.98, 0 failed",
             "note": f"{failed} failed, p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                     f"p99 {percentile(latencies, 99) * 1000:.1f} ms"},
        ]
    return rows


def run():
    with tempfile.TemporaryDirectory(prefix="bench-discovery-trust-") as tmp:
        workdir = Path(tmp)
        keys = workdir / "keys"
        keys.write_text(f"{KEY[0]} {KEY[1]}\n")
        keys.chmod(0o600)
        with RedisServer(workdir) as redis_server:
            TOKENS[:] = host_tokens(FORMS)
            rows = auth_rows(workdir, redis_server, keys)
            rows += eds_rows(workdir, redis_server)
    return rows
