"""
Where registrations live, behind one small async interface so the HTTP layer does not care:
``SqliteStore`` (embedded: one process, or several worker processes on one file) and
``RedisStore`` (shared by several discovery instances). Liveness is "last check-in at or after
``since``": readers filter on it, so an expired host is never returned even before a sweep
deletes it (the sweep guard, ``discovery.views``, decides when expired hosts stay visible).

Change stamps: every write that can change what a reader sees (a new host, a changed record, an
expired host checking in again, a deregistration, a sweep that deleted something) gives the
service a new *generation* from one store-wide increasing counter, in the same transaction as the
write. ``changes(after)`` returns the services changed since a generation, so every worker of
every instance can keep per-service answers cached and drop exactly the ones that changed. A
heartbeat that only refreshes ``last_check_in`` of a live host changes nothing and stamps nothing.
"""

import sqlite3
import time
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from discovery.model import Host, endpoint_key


class StoreError(RuntimeError):
    """The backing store failed (down, locked, corrupt); the request gets a 503."""


@dataclass(frozen=True)
class SweepResult:
    """One service's sweep: ``total`` hosts stored, ``expired`` of them, ``deleted`` now; ``held``
    when the guard kept every expired host (nothing deleted)."""
    service: str
    total: int
    expired: int
    deleted: int
    held: bool


class Store:
    """The interface. ``since`` is a UNIX time: hosts checked in before it are expired."""

    async def register(self, host: Host, since: float | None = None) -> bool:
        """Store a check-in; True when readers may see a change (stamped). ``since`` tells whether
        the previous check-in had expired (None: always stamp)."""
        raise NotImplementedError

    async def deregister(self, service: str, ip: str, port: int | None) -> int:
        """Remove one instance (ip, port) or, with port None, every instance on that ip."""
        raise NotImplementedError

    async def hosts(self, service: str, since: float) -> list[Host]:
        raise NotImplementedError

    async def all_hosts(self, service: str) -> list[Host]:
        """Every stored host of ``service``, expired ones included, ordered by (ip, port)."""
        raise NotImplementedError

    async def host_counts(self, since: float) -> dict[str, int]:
        """Live hosts per service (services with none are left out)."""
        raise NotImplementedError

    async def host_stats(self, since: float) -> dict[str, tuple[int, int]]:
        """(stored, expired) hosts per service that has any."""
        raise NotImplementedError

    async def fleet_stats(self, since: float) -> tuple[int, int]:
        """(stored, expired) hosts over every service: the fleet-wide side of the sweep guard."""
        raise NotImplementedError

    async def sweep(self, since: float) -> int:
        """Delete every host checked in before ``since`` (no guard); returns how many."""
        raise NotImplementedError

    async def guarded_sweep(self, expired_before: float, delete_before: float, guard,
                            services: list[str] | None = None, force: bool = False,
                            fleet_held: bool = False) -> list[SweepResult]:
        """Per service (all, or ``services``): count stored and expired (before ``expired_before``)
        hosts; unless ``force``, when ``guard.holds(total, expired)`` (or, ``fleet_held``, when any
        expired) delete nothing (held); otherwise
        delete the hosts checked in before ``delete_before`` (``expired_before`` when forced).
        Atomic per service: a host checking in meanwhile is never deleted."""
        raise NotImplementedError

    async def shorten(self, ips: list[str], since: float, by: float) -> list[Host]:
        """The live hosts (checked in at or after ``since``) on ``ips``: their last check-in now
        counts ``by`` seconds less, so they expire that much sooner unless they check in again (which
        gives them the full TTL back). Expired ones are hidden and swept like any others, sweep guard
        included. Returns them as changed."""
        raise NotImplementedError

    async def changes(self, after: int | None) -> tuple[int, list[str] | None]:
        """(current generation, services stamped after ``after``); the list is None when every
        cached answer must go (first call, or the store was reset: generation went backwards)."""
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
    One connection per process, used from its event loop thread only. Every statement is a
    single indexed row operation taking microseconds, so it runs inline rather than in a thread
    pool (whose hand-off would cost more than the query). WAL + synchronous=NORMAL: a commit is
    not an fsync. Several worker processes may open the same file: writes are short
    ``BEGIN IMMEDIATE`` transactions (SQLite serialises writers; ``timeout`` bounds the wait).
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS hosts (
            service TEXT NOT NULL, ip TEXT NOT NULL, port INTEGER NOT NULL,
            last_check_in REAL NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (service, ip, port));
        CREATE INDEX IF NOT EXISTS hosts_last_check_in ON hosts (last_check_in);
        CREATE TABLE IF NOT EXISTS generations (service TEXT PRIMARY KEY, gen INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS generations_gen ON generations (gen);
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

    def _transaction(self, body):
        """Run ``body()`` in one write transaction (other processes' writers wait)."""
        self._run("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            self._run("ROLLBACK")
            raise
        self._run("COMMIT")
        return result

    def _stamp(self, service):
        self._run("INSERT INTO generations (service, gen) "
                  "VALUES (?, (SELECT COALESCE(MAX(gen), 0) + 1 FROM generations)) "
                  "ON CONFLICT (service) DO UPDATE SET gen = excluded.gen", (service,))

    async def register(self, host, since=None):
        def body():
            old = self._run("SELECT record FROM hosts WHERE service = ? AND ip = ? AND port = ?",
                            (host.service, host.ip_address, host.port)).fetchone()
            self._run(
                "INSERT INTO hosts (service, ip, port, last_check_in, record) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (service, ip, port) DO UPDATE SET "
                "last_check_in = excluded.last_check_in, record = excluded.record",
                (host.service, host.ip_address, host.port, host.last_check_in, host.to_json()))
            previous = Host.from_json(old[0]) if old else None
            changed = (previous is None or since is None or previous.last_check_in < since
                       or not host.same_content(previous))
            if changed:
                self._stamp(host.service)
            return changed
        return self._transaction(body)

    async def deregister(self, service, ip, port):
        def body():
            if port is None:
                cur = self._run("DELETE FROM hosts WHERE service = ? AND ip = ?", (service, ip))
            else:
                cur = self._run("DELETE FROM hosts WHERE service = ? AND ip = ? AND port = ?", (service, ip, port))
            if cur.rowcount:
                self._stamp(service)
            return cur.rowcount
        return self._transaction(body)

    async def hosts(self, service, since):
        rows = self._run(
            "SELECT record FROM hosts WHERE service = ? AND last_check_in >= ? ORDER BY ip, port",
            (service, since)).fetchall()
        return [Host.from_json(record) for (record,) in rows]

    async def all_hosts(self, service):
        rows = self._run("SELECT record FROM hosts WHERE service = ? ORDER BY ip, port", (service,)).fetchall()
        return [Host.from_json(record) for (record,) in rows]

    async def host_counts(self, since):
        rows = self._run(
            "SELECT service, COUNT(*) FROM hosts WHERE last_check_in >= ? GROUP BY service", (since,))
        return dict(rows.fetchall())

    async def host_stats(self, since):
        rows = self._run("SELECT service, COUNT(*), SUM(last_check_in < ?) FROM hosts GROUP BY service",
                         (since,)).fetchall()
        return {service: (total, expired) for service, total, expired in rows}

    async def sweep(self, since):
        def body():
            services = [s for (s,) in self._run("SELECT DISTINCT service FROM hosts WHERE last_check_in < ?",
                                                 (since,)).fetchall()]
            deleted = self._run("DELETE FROM hosts WHERE last_check_in < ?", (since,)).rowcount
            for service in services:
                self._stamp(service)
            return deleted
        return self._transaction(body)

    async def fleet_stats(self, since):
        (total,) = self._run("SELECT COUNT(*) FROM hosts").fetchone()
        (expired,) = self._run("SELECT COUNT(*) FROM hosts WHERE last_check_in < ?", (since,)).fetchone()
        return total, expired

    async def guarded_sweep(self, expired_before, delete_before, guard, services=None, force=False,
                            fleet_held=False):
        def body():
            stats = self._run("SELECT service, COUNT(*), SUM(last_check_in < ?) FROM hosts GROUP BY service",
                              (expired_before,)).fetchall()
            results = []
            for service, total, expired in stats:
                if services is not None and service not in services:
                    continue
                if not force and guard is not None and (guard.holds(total, expired) or (fleet_held and expired)):
                    results.append(SweepResult(service, total, expired, 0, True))
                    continue
                cutoff = expired_before if force else delete_before
                deleted = self._run("DELETE FROM hosts WHERE service = ? AND last_check_in < ?",
                                    (service, cutoff)).rowcount if expired else 0
                if deleted:
                    self._stamp(service)
                results.append(SweepResult(service, total, expired, deleted, False))
            return results
        return self._transaction(body)

    async def shorten(self, ips, since, by):
        def body():
            marks = ",".join("?" * len(ips))
            rows = self._run(f"SELECT record FROM hosts WHERE ip IN ({marks}) AND last_check_in >= ?",
                             (*ips, since)).fetchall()
            changed = []
            for (record,) in rows:
                host = Host.from_json(record)
                changed.append(replace(host, last_check_in=host.last_check_in - by))
            for host in changed:
                self._run("UPDATE hosts SET last_check_in = ?, record = ? WHERE service = ? AND ip = ? AND port = ?",
                          (host.last_check_in, host.to_json(), host.service, host.ip_address, host.port))
            for service in {host.service for host in changed}:
                self._stamp(service)
            return changed
        return self._transaction(body) if ips and by > 0 else []

    async def changes(self, after):
        (current,) = self._run("SELECT COALESCE(MAX(gen), 0) FROM generations").fetchone()
        if after is None or current < after:
            return current, None
        rows = self._run("SELECT service FROM generations WHERE gen > ?", (after,)).fetchall()
        return current, [s for (s,) in rows]

    async def ping(self):
        self._run("SELECT 1").fetchone()

    async def close(self):
        self.db.close()


# KEYS: hosts hash, seen zset, services set, changes zset (service -> generation), generation counter.
# A stamp: INCR the counter and record it as the service's score in the changes zset.
REGISTER_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[4] .. '|' .. ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
local changed = 0
if not old or ARGV[5] == '' or not old_seen or tonumber(old_seen) < tonumber(ARGV[5]) then
  changed = 1
else
  local pattern = '"last_check_in":[^,}]*'
  if string.gsub(old, pattern, '') ~= string.gsub(ARGV[2], pattern, '') then changed = 1 end
end
if changed == 1 then redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[4]) end
return changed
"""

# ARGV: service, members...
DEREGISTER_LUA = """
local deleted = 0
for i = 2, #ARGV do
  deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[6], ARGV[1] .. '|' .. ARGV[i])
end
if deleted > 0 then redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[1]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return deleted
"""

# One service, atomically: count stored and expired hosts (before ARGV[3]); unless forced
# (ARGV[6] == '1') hold when more than ARGV[5] hosts and more than the share ARGV[4] of them
# expired (the same rule as discovery.views.SweepGuard.holds); otherwise delete the members seen
# before ARGV[2]. Drops the service from the index when empty.
# ARGV: service, delete_before, expired_before, fraction, min_hosts, force, fleet_held
SWEEP_SERVICE_LUA = """
local total = redis.call('ZCARD', KEYS[2])
local expired = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. ARGV[3])
local held = 0
if ARGV[6] ~= '1' and expired > tonumber(ARGV[5]) and expired > tonumber(ARGV[4]) * total then held = 1 end
if ARGV[6] ~= '1' and ARGV[7] == '1' and expired > 0 then held = 1 end
local deleted = 0
if held == 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
  for _, member in ipairs(gone) do
    redis.call('HDEL', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    redis.call('ZREM', KEYS[6], ARGV[1] .. '|' .. member)
  end
  deleted = #gone
  if deleted > 0 then redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[1]) end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return {total, expired, deleted, held}
"""


# One service: each member still seen at or after ARGV[2] and still holding the record read
# (ARGV[i + 1]) gets its shortened record (ARGV[i + 2]) and check-in time (ARGV[i + 3]); the service
# is stamped if any changed. ARGV: service, since, then (member, record read, new record, new time)
# quadruples. Returns the members changed (one that checked in meanwhile is not).
SHORTEN_LUA = """
local changed = {}
for i = 3, #ARGV, 4 do
  local seen = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if seen and tonumber(seen) >= tonumber(ARGV[2]) and redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('ZADD', KEYS[2], ARGV[i + 3], ARGV[i])
    redis.call('ZADD', KEYS[6], ARGV[i + 3], ARGV[1] .. '|' .. ARGV[i])
    table.insert(changed, ARGV[i])
  end
end
if #changed > 0 then redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[1]) end
return changed
"""


class RedisStore(Store):
    """
    Per service: a hash ``<prefix>hosts:<service>`` (ip:port -> JSON record) and a sorted set
    ``<prefix>seen:<service>`` (ip:port scored by last check-in); ``<prefix>services`` indexes them.
    Change stamps: ``<prefix>generation`` (a counter) and ``<prefix>changes`` (a sorted set:
    service scored by the generation of its last change). ``<prefix>seen-all`` scores every
    ``service|ip:port`` by last check-in, for the fleet-wide counts.
    """

    def __init__(self, url, prefix="discovery:"):
        self.url = url
        self.prefix = prefix
        # Bounded timeouts: a hung Redis must turn into a 503, not a hung Envoy poll.
        self.redis = aioredis.from_url(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
        self.register_script = self.redis.register_script(REGISTER_LUA)
        self.deregister_script = self.redis.register_script(DEREGISTER_LUA)
        self.sweep_script = self.redis.register_script(SWEEP_SERVICE_LUA)
        self.shorten_script = self.redis.register_script(SHORTEN_LUA)

    def _keys(self, service):
        return (f"{self.prefix}hosts:{service}", f"{self.prefix}seen:{service}", f"{self.prefix}services",
                f"{self.prefix}changes", f"{self.prefix}generation", f"{self.prefix}seen-all")

    async def _do(self, coro):
        try:
            return await coro
        except aioredis.RedisError as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc

    async def register(self, host, since=None):
        args = [host.key, host.to_json(), host.last_check_in, host.service, "" if since is None else since]
        return bool(await self._do(self.register_script(keys=list(self._keys(host.service)), args=args)))

    async def deregister(self, service, ip, port):
        hosts_key = self._keys(service)[0]
        if port is None:
            records = await self._do(self.redis.hvals(hosts_key))
            members = [h.key for h in map(Host.from_json, records) if h.ip_address == ip]
        else:
            members = [endpoint_key(ip, port)]
        if not members:
            return 0
        return await self._do(self.deregister_script(keys=list(self._keys(service)), args=[service, *members]))

    async def all_hosts(self, service):
        records = await self._do(self.redis.hvals(self._keys(service)[0]))
        return sorted(map(Host.from_json, records), key=lambda h: (h.ip_address, h.port))

    async def hosts(self, service, since):
        return [h for h in await self.all_hosts(service) if h.last_check_in >= since]

    async def _services(self):
        return sorted(await self._do(self.redis.smembers(f"{self.prefix}services")))

    async def host_counts(self, since):
        services = await self._services()
        pipe = self.redis.pipeline(transaction=False)
        for service in services:
            pipe.zcount(self._keys(service)[1], since, "+inf")
        counts = await self._do(pipe.execute())
        return {s: n for s, n in zip(services, counts, strict=True) if n}

    async def host_stats(self, since):
        services = await self._services()
        pipe = self.redis.pipeline(transaction=False)
        for service in services:
            pipe.zcard(self._keys(service)[1])
            pipe.zcount(self._keys(service)[1], "-inf", f"({since}")
        counts = await self._do(pipe.execute())
        stats = {s: (counts[2 * i], counts[2 * i + 1]) for i, s in enumerate(services)}
        return {s: v for s, v in stats.items() if v[0]}

    async def sweep(self, since):
        results = await self.guarded_sweep(since, since, guard=None, force=True)
        return sum(r.deleted for r in results)

    async def fleet_stats(self, since):
        pipe = self.redis.pipeline(transaction=True)
        pipe.zcard(f"{self.prefix}seen-all")
        pipe.zcount(f"{self.prefix}seen-all", "-inf", f"({since}")
        total, expired = await self._do(pipe.execute())
        return total, expired

    async def guarded_sweep(self, expired_before, delete_before, guard, services=None, force=False,
                            fleet_held=False):
        results = []
        for service in (await self._services() if services is None else services):
            args = [service, expired_before if force else delete_before, expired_before,
                    guard.fraction if guard else 1, guard.min_hosts if guard else 0, "1" if force or not guard else "0",
                    "1" if fleet_held else "0"]
            total, expired, deleted, held = await self._do(self.sweep_script(keys=list(self._keys(service)),
                                                                             args=args))
            if total or deleted:
                results.append(SweepResult(service, total, expired, deleted, bool(held)))
        return results

    async def shorten(self, ips, since, by):
        wanted, changed = set(ips), []
        if by <= 0:
            return changed
        for service in await self._services():
            records = await self._do(self.redis.hgetall(self._keys(service)[0]))
            args, hosts = [], {}
            for member, record in records.items():
                host = Host.from_json(record)
                if host.ip_address in wanted and host.last_check_in >= since:
                    hosts[member] = replace(host, last_check_in=host.last_check_in - by)
                    args += [member, record, hosts[member].to_json(), hosts[member].last_check_in]
            if args:
                done = await self._do(self.shorten_script(keys=list(self._keys(service)), args=[service, since, *args]))
                changed += [hosts[member] for member in done]
        return changed

    async def changes(self, after):
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(f"{self.prefix}generation")
        if after is not None:
            pipe.zrangebyscore(f"{self.prefix}changes", f"({after}", "+inf")
        replies = await self._do(pipe.execute())
        current = int(replies[0] or 0)
        if after is None or current < after:
            return current, None
        return current, list(replies[1])

    async def ping(self):
        await self._do(self.redis.ping())

    async def close(self):
        await self.redis.aclose()


def now():
    return time.time()
