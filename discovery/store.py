"""
Where registrations live, behind one small async interface so the HTTP layer does not care:
``SqliteStore`` (embedded, the single-node default) and ``RedisStore`` (shared by several
discovery instances). Liveness is "last check-in at or after ``since``": readers filter on it,
so an expired host is never returned even before a sweep deletes it.
"""

import sqlite3
import time

import redis.asyncio as aioredis

from discovery.model import Host, endpoint_key


class StoreError(RuntimeError):
    """The backing store failed (down, locked, corrupt); the request gets a 503."""


class Store:
    """The interface. ``since`` is a UNIX time: hosts checked in before it are expired."""

    async def register(self, host: Host) -> None:
        raise NotImplementedError

    async def deregister(self, service: str, ip: str, port: int | None) -> int:
        """Remove one instance (ip, port) or, with port None, every instance on that ip."""
        raise NotImplementedError

    async def hosts(self, service: str, since: float) -> list[Host]:
        raise NotImplementedError

    async def host_counts(self, since: float) -> dict[str, int]:
        """Live hosts per service (services with none are left out)."""
        raise NotImplementedError

    async def sweep(self, since: float) -> int:
        """Delete every host checked in before ``since``; returns how many."""
        raise NotImplementedError

    async def ping(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def open_store(redis_url=None, sqlite_path=None):
    if redis_url:
        return RedisStore(redis_url)
    return SqliteStore(sqlite_path or ":memory:")


class SqliteStore(Store):
    """
    One connection used from the event loop thread only. Every statement is a single indexed
    row operation taking microseconds, so it runs inline rather than in a thread pool (whose
    hand-off would cost more than the query). WAL + synchronous=NORMAL: a commit is not an fsync.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS hosts (
            service TEXT NOT NULL, ip TEXT NOT NULL, port INTEGER NOT NULL,
            last_check_in REAL NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (service, ip, port));
        CREATE INDEX IF NOT EXISTS hosts_last_check_in ON hosts (last_check_in);
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(self.SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    def _run(self, sql, params=()):
        try:
            return self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    async def register(self, host):
        self._run(
            "INSERT INTO hosts (service, ip, port, last_check_in, record) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (service, ip, port) DO UPDATE SET "
            "last_check_in = excluded.last_check_in, record = excluded.record",
            (host.service, host.ip_address, host.port, host.last_check_in, host.to_json()))

    async def deregister(self, service, ip, port):
        if port is None:
            cur = self._run("DELETE FROM hosts WHERE service = ? AND ip = ?", (service, ip))
        else:
            cur = self._run("DELETE FROM hosts WHERE service = ? AND ip = ? AND port = ?", (service, ip, port))
        return cur.rowcount

    async def hosts(self, service, since):
        rows = self._run(
            "SELECT record FROM hosts WHERE service = ? AND last_check_in >= ? ORDER BY ip, port",
            (service, since)).fetchall()
        return [Host.from_json(record) for (record,) in rows]

    async def host_counts(self, since):
        rows = self._run(
            "SELECT service, COUNT(*) FROM hosts WHERE last_check_in >= ? GROUP BY service", (since,))
        return dict(rows.fetchall())

    async def sweep(self, since):
        return self._run("DELETE FROM hosts WHERE last_check_in < ?", (since,)).rowcount

    async def ping(self):
        self._run("SELECT 1").fetchone()

    async def close(self):
        self.db.close()


# Deletes the expired members of one service atomically, so a host that checks in while the
# sweep runs is never deleted with a fresh check-in. Drops the service from the index when empty.
SWEEP_SERVICE_LUA = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, member in ipairs(expired) do
  redis.call('HDEL', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return #expired
"""


class RedisStore(Store):
    """
    Per service: a hash ``<prefix>hosts:<service>`` (ip:port -> JSON record) and a sorted set
    ``<prefix>seen:<service>`` (ip:port scored by last check-in); ``<prefix>services`` indexes them.
    """

    def __init__(self, url, prefix="discovery:"):
        self.url = url
        self.prefix = prefix
        # Bounded timeouts: a hung Redis must turn into a 503, not a hung Envoy poll.
        self.redis = aioredis.from_url(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
        self.sweep_script = self.redis.register_script(SWEEP_SERVICE_LUA)

    def _keys(self, service):
        return f"{self.prefix}hosts:{service}", f"{self.prefix}seen:{service}", f"{self.prefix}services"

    async def _do(self, coro):
        try:
            return await coro
        except aioredis.RedisError as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc

    async def register(self, host):
        hosts_key, seen_key, services_key = self._keys(host.service)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(hosts_key, host.key, host.to_json())
        pipe.zadd(seen_key, {host.key: host.last_check_in})
        pipe.sadd(services_key, host.service)
        await self._do(pipe.execute())

    async def deregister(self, service, ip, port):
        hosts_key, seen_key, _ = self._keys(service)
        if port is None:
            records = await self._do(self.redis.hvals(hosts_key))
            members = [h.key for h in map(Host.from_json, records) if h.ip_address == ip]
        else:
            members = [endpoint_key(ip, port)]
        if not members:
            return 0
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(hosts_key, *members)
        pipe.zrem(seen_key, *members)
        deleted, _ = await self._do(pipe.execute())
        return deleted

    async def hosts(self, service, since):
        hosts_key, _, _ = self._keys(service)
        records = await self._do(self.redis.hvals(hosts_key))
        live = [h for h in map(Host.from_json, records) if h.last_check_in >= since]
        return sorted(live, key=lambda h: (h.ip_address, h.port))

    async def _services(self):
        return sorted(await self._do(self.redis.smembers(f"{self.prefix}services")))

    async def host_counts(self, since):
        services = await self._services()
        pipe = self.redis.pipeline(transaction=False)
        for service in services:
            pipe.zcount(self._keys(service)[1], since, "+inf")
        counts = await self._do(pipe.execute())
        return {s: n for s, n in zip(services, counts, strict=True) if n}

    async def sweep(self, since):
        swept = 0
        for service in await self._services():
            swept += await self._do(self.sweep_script(keys=list(self._keys(service)), args=[since, service]))
        return swept

    async def ping(self):
        await self._do(self.redis.ping())

    async def close(self):
        await self.redis.aclose()


def now():
    return time.time()
