"""
The two stores behind one interface, driven directly (times passed in, so expiry is exact):
SQLite on a file and a real Redis server. Plus what the service does when Redis dies.
"""

import asyncio

import pytest
import requests

from discovery.model import Host
from discovery.store import RedisStore, SqliteStore, StoreError
from tests.helpers.discovery import DiscoveryService, RedisServer, register

TAGS = {"az": "a", "region": "r", "instance_id": "i"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis-store")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """A factory: each call opens a store on the same backing data (a second node)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "store.sqlite3")
    url = request.getfixturevalue("redis_server").url
    prefix = f"test-{request.node.name}:"
    return lambda: RedisStore(url, prefix=prefix)


def host(service, ip, port, at):
    return Host(service, ip, port, "r1", service, dict(TAGS), at)


def run(coro):
    return asyncio.run(coro)


def test_expired_hosts_are_never_returned_even_before_a_sweep(make_store):
    async def scenario():
        store = make_store()
        await store.register(host("a", "10.0.0.1", 80, at=100.0))
        await store.register(host("a", "10.0.0.1", 81, at=200.0))
        await store.register(host("b", "10.0.0.2", 80, at=150.0))
        fresh = [(h.ip_address, h.port) for h in await store.hosts("a", since=150.0)]
        counts = await store.host_counts(since=150.0)
        await store.close()
        return fresh, counts

    fresh, counts = run(scenario())
    assert fresh == [("10.0.0.1", 81)]
    assert counts == {"a": 1, "b": 1}


def test_sweep_deletes_only_expired_hosts_and_a_heartbeat_saves_one(make_store):
    async def scenario():
        store = make_store()
        await store.register(host("a", "10.0.0.1", 80, at=100.0))
        await store.register(host("a", "10.0.0.2", 80, at=100.0))
        await store.register(host("c", "10.0.0.3", 80, at=100.0))
        await store.register(host("a", "10.0.0.2", 80, at=300.0))  # heartbeat
        swept = await store.sweep(since=200.0)
        left = [(h.service, h.ip_address) for s in ("a", "c") for h in await store.hosts(s, since=0.0)]
        again = await store.sweep(since=200.0)
        counts = await store.host_counts(since=0.0)
        await store.close()
        return swept, left, again, counts

    swept, left, again, counts = run(scenario())
    assert swept == 2 and again == 0
    assert left == [("a", "10.0.0.2")]
    assert counts == {"a": 1}


def test_deregister_by_endpoint_or_by_ip_and_a_second_node_sees_the_same_data(make_store):
    async def scenario():
        first, second = make_store(), make_store()
        for port in (80, 81, 82):
            await first.register(host("a", "10.0.0.1", port, at=100.0))
        one = await second.deregister("a", "10.0.0.1", 81)
        rest = [h.port for h in await second.hosts("a", since=0.0)]
        by_ip = await second.deregister("a", "10.0.0.1", None)
        none = await first.deregister("a", "10.0.0.1", 80)
        left = await first.hosts("a", since=0.0)
        await first.close()
        await second.close()
        return one, rest, by_ip, none, left

    one, rest, by_ip, none, left = run(scenario())
    assert (one, rest, by_ip, none, left) == (1, [80, 82], 2, 0, [])


def test_a_record_round_trips_every_field(make_store):
    original = Host("svc", "fd00::1", 443, "rev", "repo", {**TAGS, "canary": True, "load_balancing_weight": 7}, 12.5)

    async def scenario():
        store = make_store()
        await store.register(original)
        [back] = await store.hosts("svc", since=0.0)
        await store.close()
        return back

    assert run(scenario()) == original


def test_an_unwritable_sqlite_path_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="sqlite .*missing-dir"):
        SqliteStore(tmp_path / "missing-dir" / "x.sqlite3")


def test_redis_down_gives_503_and_counted_errors_then_recovers(tmp_path):
    redis_server = RedisServer(tmp_path)
    port = redis_server.port
    with DiscoveryService(tmp_path, ttl=600, redis_url=redis_server.url) as svc:
        assert register(svc.url, "r", "10.0.0.1", 80).status_code == 200
        redis_server.stop()
        resp = register(svc.url, "r", "10.0.0.2", 80)
        assert resp.status_code == 503 and "store unavailable" in resp.json()["error"]
        eds = requests.post(f"{svc.url}/v3/discovery:endpoints", json={"resource_names": ["r"]}, timeout=10)
        assert eds.status_code == 503  # Envoy keeps its last endpoints on a failed poll
        assert requests.get(f"{svc.url}/healthcheck", timeout=10).status_code == 503
        # A restarted Redis (empty: no persistence) is picked up without restarting the service.
        redis_server = RedisServer(tmp_path, port=port)
        try:
            assert register(svc.url, "r", "10.0.0.2", 80).status_code == 200
            metrics = requests.get(f"{svc.url}/metrics", timeout=5).text
            assert 'discovery_errors_total{operation="register"} 1' in metrics
            assert 'discovery_errors_total{operation="eds"} 1' in metrics
        finally:
            redis_server.stop()


def test_change_stamps_follow_what_readers_see_and_a_guarded_sweep_holds(make_store):
    from discovery.views import SweepGuard

    async def scenario():
        store, other = make_store(), make_store()
        start, _ = await other.changes(None)
        seen = []

        async def step(coro):
            await coro
            nonlocal start
            start, changed = await other.changes(start)
            seen.append(sorted(changed))

        await step(store.register(host("a", "10.0.0.1", 80, at=100.0), since=50.0))   # new host
        await step(store.register(host("a", "10.0.0.1", 80, at=110.0), since=60.0))   # heartbeat
        await step(store.register(host("a", "10.0.0.1", 80, at=300.0), since=200.0))  # back from expiry
        for port in (81, 82):
            await step(store.register(host("a", "10.0.0.1", port, at=300.0), since=200.0))
        await step(store.deregister("a", "10.0.0.1", 82))
        # 2 of 2 expired (> 1 host and > half): held, nothing deleted, no stamp.
        held = await store.guarded_sweep(400.0, 400.0, SweepGuard())
        after_held, _ = await other.changes(start)
        forced = await store.guarded_sweep(400.0, 400.0, SweepGuard(), services=["a"], force=True)
        _, changed = await other.changes(after_held)
        await store.close()
        await other.close()
        return seen, held, forced, changed

    seen, held, forced, changed = run(scenario())
    assert seen == [["a"], [], ["a"], ["a"], ["a"], ["a"]]
    assert [(r.service, r.total, r.expired, r.deleted, r.held) for r in held] == [("a", 2, 2, 0, True)]
    assert [(r.deleted, r.held) for r in forced] == [(2, False)] and changed == ["a"]
