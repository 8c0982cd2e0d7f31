"""
An open-loop, constant-rate HTTP/1.1 load generator: request ``i`` is due at ``start + i / rate``
whatever happened to the requests before it, and its latency counts from that due time. A slow or
stuck response therefore never slows the sending down or hides the requests that should have been
sent meanwhile (the "coordinated omission" of closed-loop tools such as wrk or hey). Connections are
keep-alive and pooled; a request due while every pooled connection is busy opens another (up to
``--connections``), else waits for one, and that wait is part of its latency.

Every request is recorded: due time, latency, status (0 for a connection error or timeout), error,
and the response body's first bytes; a request failed when its status is not 200.

Run it where the target is reachable (in the lab: ``lab.spawn("lab", [python, "-m",
"tests.helpers.openloop", ...])``). It stops after ``--count`` requests or ``--duration`` seconds,
whichever comes first, or at SIGINT/SIGTERM (it then stops sending, waits for the requests in
flight up to ``--timeout`` and writes its result). Output: JSON to ``--out`` (or stdout).

    python -m tests.helpers.openloop --url http://10.77.0.12:8080/foo/x --rate 200 --duration 10 \\
        --out result.json
"""

import argparse
import asyncio
import json
import signal
import sys
import time
from urllib.parse import urlsplit


class Target:
    def __init__(self, url, headers):
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise SystemExit(f"only http:// URLs: {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {headers.pop('host', parts.netloc)}", "User-Agent: openloop"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def close(self):
        self.writer.close()


async def read_response(reader, body_bytes):
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    length, close, chunked = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.lower() == "close":
            close = True
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(length) if length else b""
    return status, body[:body_bytes].decode("utf-8", "replace"), close


class Generator:
    def __init__(self, targets, rate, count, duration, connections, timeout, body_bytes):
        self.targets = targets
        self.rate, self.count, self.duration = rate, count, duration
        self.max_connections, self.timeout, self.body_bytes = connections, timeout, body_bytes
        self.idle = {id(t): [] for t in targets}
        self.open = {id(t): 0 for t in targets}
        self.freed = asyncio.Condition()
        self.records = []
        self.stopping = False
        self.connections_opened = 0

    async def acquire(self, target):
        key = id(target)
        async with self.freed:
            while not self.idle[key] and self.open[key] >= self.max_connections:
                await self.freed.wait()
            if self.idle[key]:
                return self.idle[key].pop()
            self.open[key] += 1
        try:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        except BaseException:
            await self.release(target, None)
            raise
        self.connections_opened += 1
        return Conn(reader, writer)

    async def release(self, target, conn):
        key = id(target)
        async with self.freed:
            if conn is None:
                self.open[key] -= 1
            else:
                self.idle[key].append(conn)
            self.freed.notify()

    async def one(self, index, target, due):
        record = {"i": index, "target": self.targets.index(target), "due": due - self.started,
                  "status": 0, "error": None, "body": ""}
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self.acquire(target)
                conn.writer.write(target.request)
                status, body, close = await read_response(conn.reader, self.body_bytes)
            record.update(status=status, body=body, latency_ms=(time.monotonic() - due) * 1000.0)
            if close:
                conn.close()
                await self.release(target, None)
            else:
                await self.release(target, conn)
        except (OSError, EOFError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                ValueError, IndexError) as exc:
            record.update(error=f"{type(exc).__name__}: {exc}", latency_ms=(time.monotonic() - due) * 1000.0)
            if conn is not None:  # acquired: this connection is done for
                conn.close()
                await self.release(target, None)
        self.records.append(record)

    async def run(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        self.started = time.monotonic()
        deadline = self.started + self.duration
        tasks = set()
        index = 0
        while not self.stopping and index < self.count:
            due = self.started + index / self.rate
            if due >= deadline:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            target = self.targets[index % len(self.targets)]
            task = asyncio.create_task(self.one(index, target, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        self.sent_s = time.monotonic() - self.started
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 5)
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        return self.result()

    def stop(self):
        self.stopping = True

    def result(self):
        self.records.sort(key=lambda r: r["i"])
        failed = [r for r in self.records if r["status"] != 200]
        latencies = sorted(r["latency_ms"] for r in self.records if r["status"] == 200)
        return {
            "targets": [f"{t.host}:{t.port}" for t in self.targets], "rate": self.rate,
            "started_monotonic": self.started,  # CLOCK_MONOTONIC: comparable with other processes here
            "sent": len(self.records), "ok": len(self.records) - len(failed), "failed": len(failed),
            "sending_s": self.sent_s, "connections_opened": self.connections_opened,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else None,
            "records": self.records,
        }


def percentile(ordered, pct):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", action="append", required=True,
                        help="target URL (repeatable: requests take the targets in turn)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, over all targets")
    parser.add_argument("--count", type=int, default=1_000_000, help="at most this many requests")
    parser.add_argument("--duration", type=float, required=True, help="at most this many seconds of sending")
    parser.add_argument("--connections", type=int, default=64, help="at most this many connections per target")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--header", action="append", default=[], help="Name: value (repeatable)")
    parser.add_argument("--body-bytes", type=int, default=300, help="keep this much of each response body")
    parser.add_argument("--out", help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.duration > 600:
        parser.error("--rate must be > 0 and --duration in (0, 600]")
    return args


def main(argv=None):
    args = parse_args(argv)
    headers = {}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    targets = [Target(url, dict(headers)) for url in args.url]
    gen = Generator(targets, args.rate, args.count, args.duration, args.connections, args.timeout, args.body_bytes)
    result = asyncio.run(gen.run())
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
