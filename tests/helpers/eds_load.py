"""
Envoy-size EDS requests (77 KB bodies: the node lists every extension, as Envoy 1.40 sends it)
from 16 keep-alive connections to the given discovery instances, as fast as they answer: the load
other Envoys put on the discovery service. An error is a refused, reset or timed-out request (an
instance that died meanwhile: this client, unlike Envoy, does not retry).

In a test process, in a thread (``with EdsLoad(urls) as load: ...``), or where the instances are
reachable (in the lab: ``lab.spawn("lab", [python, "-m", "tests.helpers.eds_load", "--url", ...,
"--duration", "20", "--out", path])``, or until SIGINT/SIGTERM).
"""

import argparse
import asyncio
import json
import random
import signal
import threading
import time

import aiohttp

CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def request_bodies(services):
    extensions = [{"name": f"envoy.extension.{i:04d}", "category": "envoy.filters.http"} for i in range(1000)]
    return [json.dumps({"node": {"id": "load", "extensions": extensions}, "resource_names": [service],
                        "type_url": CLA}).encode() for service in services]


class EdsLoad:
    def __init__(self, urls, services=("svc-00",), concurrency=16):
        self.urls, self.services, self.concurrency = list(urls), list(services), concurrency
        self.stop_event = threading.Event()
        self.ok = self.errors = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    async def run(self, duration=None):
        bodies = request_bodies(self.services)
        deadline = None if duration is None else time.monotonic() + duration
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async def worker(seed):
                rng = random.Random(seed)
                while not self.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
                    try:
                        async with session.post(f"{rng.choice(self.urls)}/v3/discovery:endpoints",
                                                data=rng.choice(bodies)) as resp:
                            await resp.read()
                            self.ok += resp.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                        self.errors += 1
                        await asyncio.sleep(0.01)
            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", required=True, help="a discovery instance (repeatable)")
    parser.add_argument("--service", action="append", default=[], help="a service to ask for (repeatable)")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    load = EdsLoad(args.url, args.service or ["svc-00"], args.concurrency)
    signal.signal(signal.SIGTERM, lambda *_: load.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: load.stop_event.set())
    started = time.monotonic()
    asyncio.run(load.run(args.duration))
    elapsed = time.monotonic() - started
    with open(args.out, "w") as handle:
        json.dump({"ok": load.ok, "errors": load.errors, "seconds": elapsed, "rate": load.ok / elapsed}, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
