"""
The formula's registration client with several discovery instances (``envoy:discovery:address``
as a list), against real ``envoy-discovery`` processes: any instance that answers will do (they
share one store), one that is down or answers 5xx is skipped, a 4xx is the answer (every instance
would give it), each host starts with an instance of its own, and a request leaves from the
address it registers.
"""

import pytest
import requests
from envoy_formula import discovery_registration, host_settings
from envoy_formula.errors import EnvoyFormulaError

from tests.helpers.discovery import DiscoveryService, RedisServer
from tests.helpers.net import free_port

GRAINS = {"id": "web1"}


def host_for(tmp_path, addresses, ip="127.0.0.7"):
    manifests = tmp_path / "root/etc/envoy/manifest.d"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "users.yaml").write_text("service: users\ningress: {port: 8081, app_port: 8080}\n")
    pillar = {"lookup": {"root": str(tmp_path / "root")},
              "discovery": {"address": addresses, "register": {"ip": ip, "tags": {"az": "us-east-1a"},
                                                               "timeout": 3}}}
    return host_settings.resolve(pillar, grains={"id": "web1"}, euid=0)


def listed(url):
    return [(h["ip_address"], h["port"]) for h in requests.get(f"{url}/v1/registration/users", timeout=5).json()["hosts"]]


@pytest.fixture
def shared(tmp_path):
    """Two instances on one Redis."""
    with RedisServer(tmp_path) as redis_server:
        first = DiscoveryService(tmp_path, redis_url=redis_server.url)
        second = DiscoveryService(tmp_path, redis_url=redis_server.url)
        try:
            yield redis_server, first, second
        finally:
            first.stop()
            second.stop()


def test_a_dead_instance_is_skipped_and_the_others_share_the_registration(tmp_path, shared):
    _, first, second = shared
    dead = f"127.0.0.1:{free_port()}"
    host = host_for(tmp_path, [dead, f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"])
    out = discovery_registration.register(host, GRAINS)
    assert out["registered"] == ["users 127.0.0.7:8081"]
    assert listed(first.url) == listed(second.url) == [("127.0.0.7", 8081)]
    status = discovery_registration.status(host, GRAINS)
    assert status["services"][0]["current"] is True
    assert discovery_registration.deregister(host, GRAINS)["deregistered"] == ["users 127.0.0.7:8081"]
    assert listed(second.url) == []


def test_an_instance_answering_503_is_skipped(tmp_path, shared):
    redis_server, first, _ = shared
    healthy = DiscoveryService(tmp_path, sqlite_path=tmp_path / "own.sqlite3")
    try:
        redis_server.stop()  # the Redis instances now answer 503: store unavailable
        host = host_for(tmp_path, [f"127.0.0.1:{first.port}", f"127.0.0.1:{healthy.port}"])
        assert discovery_registration.register(host, GRAINS)["url"] == healthy.url
        assert listed(healthy.url) == [("127.0.0.7", 8081)]
    finally:
        healthy.stop()


def test_a_refusal_is_the_answer_and_no_answer_at_all_names_every_instance(tmp_path, shared):
    _, first, second = shared
    host = host_for(tmp_path, [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"])
    host["discovery"]["register"]["tags"] = {"az": "us-east-1a", "canary": "maybe"}
    with pytest.raises(EnvoyFormulaError) as refused:
        discovery_registration.register(host, GRAINS)
    assert "refused with HTTP 400: tags.canary: must be true or false" in str(refused.value)
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with pytest.raises(EnvoyFormulaError) as unreachable:
        discovery_registration.register(host_for(tmp_path, dead), GRAINS)
    message = str(unreachable.value)
    assert "no discovery instance answered" in message and all(f"http://{d} unreachable" in message for d in dead)


def test_each_host_starts_with_an_instance_of_its_own():
    urls = [f"http://d{i}:8080" for i in range(3)]
    firsts = {discovery_registration.instance_order(urls, f"10.0.0.{i}")[0] for i in range(1, 40)}
    assert firsts == set(urls)
    assert discovery_registration.instance_order(urls, "10.0.0.7") == discovery_registration.instance_order(
        urls, "10.0.0.7")
    assert sorted(discovery_registration.instance_order(urls, "10.0.0.7")) == urls


def test_a_registered_address_this_host_does_not_have_still_sends(tmp_path):
    """Requests leave from the registered address when the host has it (the auth tests depend on
    it: tests/integration/test_discovery_auth.py); otherwise the kernel picks the source."""
    assert discovery_registration.is_local_address("127.0.0.9")
    assert not discovery_registration.is_local_address("192.0.2.1")
    with DiscoveryService(tmp_path) as service, discovery_registration.session_from("192.0.2.1") as session:
        assert session.get(f"{service.url}/healthcheck", timeout=5).status_code == 200
