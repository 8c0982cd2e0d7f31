"""
A real HTTP load client (asyncio + aiohttp) with keep-alive connections. It counts every
failed request (connection error, timeout, or a status outside ``ok_statuses``) and keeps every
latency, so tests can assert "0 failed" and benchmarks can report percentiles.

Usage from a test (runs in its own thread so the test can hot restart meanwhile):

    with LoadRunner("http://127.0.0.1:9001/", connections=20, headers={"Host": "bar"}) as load:
        ...  # restart things
    assert load.result.failed == 0, load.result.errors[:5]
"""

import asyncio
import threading
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    latencies_ms: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def total(self):
        return self.ok + self.failed

    @property
    def rps(self):
        return self.total / self.duration_s if self.duration_s else 0.0

    def percentile(self, pct):
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(pct / 100.0 * len(ordered)) - 1))
        return ordered[index]


async def run_load(url, stop_event, connections=20, headers=None, rate=None, ok_statuses=(200,),
                   timeout_s=10.0, result=None):
    """Send requests over ``connections`` keep-alive connections until ``stop_event`` is set.
    ``rate`` (requests/s over all connections) paces the load; None means as fast as possible."""
    result = result or LoadResult()
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    interval = connections / rate if rate else 0.0
    started = time.monotonic()

    async def worker(session):
        next_at = time.monotonic()
        while not stop_event.is_set():
            t0 = time.monotonic()
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    if resp.status in ok_statuses:
                        result.ok += 1
                    else:
                        result.failed += 1
                        result.errors.append(f"HTTP {resp.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                result.failed += 1
                result.errors.append(repr(exc))
            result.latencies_ms.append((time.monotonic() - t0) * 1000.0)
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    result.duration_s = time.monotonic() - started
    return result


class LoadRunner:
    """Runs :func:`run_load` in a background thread for the duration of a ``with`` block.
    ``max_seconds`` bounds the run even if the block never exits cleanly."""

    def __init__(self, url, connections=20, headers=None, rate=None, ok_statuses=(200,), max_seconds=300):
        self.url = url
        self.kwargs = dict(connections=connections, headers=headers, rate=rate, ok_statuses=ok_statuses)
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._thread = None
        self._loop = None
        self._stop = None

    def _run(self):
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._loop.call_later(self.max_seconds, self._stop.set)
        self._loop.run_until_complete(run_load(self.url, self._stop, result=self.result, **self.kwargs))
        self._loop.close()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        while self._stop is None:
            time.sleep(0.01)
        return self

    def stop(self):
        if self._loop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout=60)
        return self.result

    def __exit__(self, *exc):
        self.stop()
