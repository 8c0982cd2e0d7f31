"""
envoy_client against a real Envoy egress: routing by service, the timeout/retry headers and their
effect (retries counted at the upstream app, timeouts as 504 UT), bounds, errors, request ids and
connection reuse. The upstream apps are tests.helpers.egress.Recorder instances.
"""

import json
import logging

import envoy_client
import pytest
import requests
from envoy_client import (
    Client,
    NoEgressError,
    UnknownServiceError,
    UpstreamError,
    UpstreamTimeoutError,
)

from tests.helpers.egress import EnvoyProcess, Recorder, egress_config, write_client_json
from tests.helpers.net import free_port


def test_routes_by_service_name_with_host_header(mesh, uid):
    for service in ("bar", "baz"):
        answer = mesh.client.get_json(service, f"/v1/rides?{uid}")
        assert answer["service"] == service
        seen = mesh.recorders[service].requests(f"/v1/rides?{uid}")
        assert len(seen) == 1
        assert seen[0]["headers"]["host"] == service


def test_default_policy_reaches_envoy(mesh, uid):
    """bar's client.json entry: timeout 4000 ms, 1 retry. Envoy passes its timeout on to the app as
    x-envoy-expected-rq-timeout-ms, and retries the first 503 (the egress route has no retry policy
    of its own: the retry comes from the client's headers)."""
    answer = mesh.client.get_json("bar", f"/flaky/{uid}/1")
    tries = mesh.recorders["bar"].requests(f"/flaky/{uid}/")
    assert len(tries) == 2
    # The first try gets the whole timeout; a retry gets what is left of it.
    assert tries[0]["headers"]["x-envoy-expected-rq-timeout-ms"] == "4000"
    assert int(tries[1]["headers"]["x-envoy-expected-rq-timeout-ms"]) <= 4000
    # The router headers are Envoy's: they do not reach the app.
    assert "x-envoy-upstream-rq-timeout-ms" not in answer["headers"]
    assert "x-envoy-max-retries" not in answer["headers"]


def test_overridden_retries_are_honoured_and_counted(mesh, uid):
    with pytest.raises(UpstreamError) as caught:
        mesh.client.get("bar", f"/status/503?{uid}", retries=2)
    assert mesh.recorders["bar"].count(f"/status/503?{uid}") == 3
    assert caught.value.status == 503
    assert caught.value.flags == ("URX",)


def test_retries_above_the_bound_are_clamped(mesh, uid, caplog):
    """bar's bounds allow at most 2 retries: asking for 3 gets 2 (3 attempts), with a warning."""
    envoy_client.policy._warned.clear()
    with caplog.at_level(logging.WARNING, logger="envoy_client"):
        policy = mesh.client.policy("bar", retries=3)
    assert [r.getMessage() for r in caplog.records] == [
        "envoy_client: retries=3 for service 'bar' is outside the bounds [0, 2] from "
        f"{mesh.client_json} upstreams.bar.bounds.retries: clamped to the max, 2"]
    assert policy.retries == 2
    assert "clamped to max 2" in policy.sources["retries"]
    with pytest.raises(UpstreamError):
        mesh.client.get("bar", f"/status/503?{uid}", retries=3)
    assert mesh.recorders["bar"].count(f"/status/503?{uid}") == 3


def test_timeout_above_the_bound_is_clamped(mesh, uid):
    answer = mesh.client.get_json("bar", f"/echo?{uid}", timeout_ms=50000)
    assert answer["headers"]["x-envoy-expected-rq-timeout-ms"] == "8000"


def test_post_is_not_retried_by_default(mesh, uid):
    with pytest.raises(UpstreamError):
        mesh.client.post("bar", f"/status/503?{uid}", json={"a": 1})
    assert mesh.recorders["bar"].count(f"/status/503?{uid}") == 1


def test_post_is_retried_when_the_caller_opts_in(mesh, uid):
    with pytest.raises(UpstreamError):
        mesh.client.post("bar", f"/status/503?{uid}-explicit", json={"a": 1}, retries=2)
    assert mesh.recorders["bar"].count(f"/status/503?{uid}-explicit") == 3
    with pytest.raises(UpstreamError):
        mesh.client.post("bar", f"/status/503?{uid}-idempotent", json={"a": 1}, idempotent=True)
    assert mesh.recorders["bar"].count(f"/status/503?{uid}-idempotent") == 2  # bar's default: 1 retry


def test_post_overrides_the_routes_own_retry_policy(mesh, uid):
    """qux's egress route retries twice on its own; the client's x-envoy-max-retries: 0 for a POST
    wins, while a GET gets qux's client.json default (1 retry), not the route's 2."""
    with pytest.raises(UpstreamError):
        mesh.client.post("qux", f"/status/503?{uid}-post")
    assert mesh.recorders["qux"].count(f"/status/503?{uid}-post") == 1
    with pytest.raises(UpstreamError):
        mesh.client.get("qux", f"/status/503?{uid}-get")
    assert mesh.recorders["qux"].count(f"/status/503?{uid}-get") == 2


def test_timeout_gives_504_ut_and_says_whose_timeout(mesh, uid):
    with pytest.raises(UpstreamTimeoutError) as caught:
        mesh.client.get("bar", f"/sleep/1500?{uid}", timeout_ms=200, retries=0)
    error = caught.value
    assert error.status == 504
    assert error.flags == ("UT",)
    assert error.whose == "envoy"
    assert error.timeout_ms == 200
    assert "the call argument timeout_ms=200" in error.timeout_source
    message = str(error)
    assert "bar GET /sleep/1500" in message
    assert "200 ms" in message and "x-envoy-upstream-rq-timeout-ms" in message
    assert "UT (upstream request timeout)" in message
    assert error.request_id and error.request_id in message


def test_per_try_timeout_retries_each_slow_try(mesh, uid):
    with pytest.raises(UpstreamTimeoutError) as caught:
        mesh.client.get("bar", f"/sleep/1000?{uid}", timeout_ms=5000, per_try_timeout_ms=150, retries=2)
    assert mesh.recorders["bar"].count(f"/sleep/1000?{uid}") == 3
    assert caught.value.per_try_timeout_ms == 150
    assert "150 ms per try" in str(caught.value)
    seen = mesh.recorders["bar"].requests(f"/sleep/1000?{uid}")
    # With a per-try timeout, Envoy tells the app the per-try budget.
    assert {r["headers"]["x-envoy-expected-rq-timeout-ms"] for r in seen} == {"150"}


def test_unknown_upstream_gets_library_defaults_within_global_bounds(mesh, uid):
    """baz is not in client.json: the library default timeout (15000 ms) clamped to the file's
    global max (10000), and the library default of 1 retry."""
    policy = mesh.client.policy("baz")
    assert (policy.timeout_ms, policy.retries) == (10000, 1)
    assert policy.sources["timeout_ms"].startswith("the library default, clamped to max 10000")
    mesh.client.get_json("baz", f"/flaky/{uid}/1")
    tries = mesh.recorders["baz"].requests(f"/flaky/{uid}/")
    assert len(tries) == 2
    assert tries[0]["headers"]["x-envoy-expected-rq-timeout-ms"] == "10000"


def test_service_without_route_is_unknown_service_error(mesh):
    with pytest.raises(UnknownServiceError) as caught:
        mesh.client.get("nope", "/v1/x")
    error = caught.value
    assert (error.status, error.flags, error.service) == (404, ("NR",), "nope")
    assert "no route for service 'nope'" in str(error)
    assert "manifests" in str(error)


def test_upstream_down_error_has_status_flags_service_and_request_id(mesh):
    with pytest.raises(UpstreamError) as caught:
        mesh.client.get("down", "/v1/x", headers={"x-request-id": "rid-down-1"})
    error = caught.value
    assert error.status == 503
    assert error.flags is not None and "UF" in error.flags
    assert error.service == "down"
    assert error.request_id == "rid-down-1"
    message = str(error)
    assert message.startswith("down GET /v1/x -> 503 Service Unavailable")
    assert "UF (upstream connection failure)" in message
    assert "rid-down-1" in message


def test_error_status_from_the_app_itself(mesh, uid):
    with pytest.raises(UpstreamError) as caught:
        mesh.client.get("bar", f"/status/404?{uid}")
    error = caught.value
    assert (error.status, error.flags) == (404, ())
    assert not isinstance(error, UnknownServiceError)
    assert "the status came from the upstream service itself" in str(error)
    assert "bar says 404" in str(error)
    assert isinstance(error.response, requests.Response)


def test_raise_for_status_false_returns_the_response(mesh, uid):
    response = mesh.client.get("bar", f"/status/503?{uid}", retries=0, raise_for_status=False)
    assert response.status_code == 503
    assert envoy_client.parse_flags(response) == ()  # the app's own 503, not retried: no flags


def test_generated_request_id_reaches_the_app(mesh, uid):
    answer = mesh.client.get_json("bar", f"/echo?{uid}")
    sent = mesh.recorders["bar"].requests(f"/echo?{uid}")[0]["headers"]["x-request-id"]
    assert sent == answer["headers"]["x-request-id"]
    assert len(sent) == 36  # a uuid4 from the client, kept by the trusted egress


def test_json_helpers(mesh, uid):
    answer = mesh.client.post_json("bar", f"/things?{uid}", {"a": [1, 2]})
    assert answer["method"] == "POST"
    assert json.loads(answer["body"]) == {"a": [1, 2]}
    assert answer["headers"]["content-type"] == "application/json"
    assert answer["headers"]["accept"] == "application/json"
    assert mesh.client.put_json("bar", f"/things/1?{uid}", {"b": 1})["method"] == "PUT"
    assert mesh.client.get_json("bar", f"/empty?{uid}") is None
    with pytest.raises(envoy_client.InvalidJSONError) as caught:
        mesh.client.get_json("bar", f"/text?{uid}")
    assert "not JSON" in str(caught.value) and "text/plain" in str(caught.value)


def test_module_level_functions_use_the_default_client(mesh, uid, monkeypatch):
    monkeypatch.setenv("ENVOY_CLIENT_CONFIG", str(mesh.client_json))
    envoy_client.set_default_client(None)
    try:
        assert envoy_client.get_json("bar", f"/echo?{uid}")["service"] == "bar"
        assert envoy_client.get("baz", f"/echo?{uid}").status_code == 200
        assert envoy_client.default_client() is envoy_client.default_client()
    finally:
        envoy_client.set_default_client(None)


def test_connection_pool_is_reused(mesh, uid):
    """Many calls, few connections: Envoy's downstream_cx_total on the egress barely moves."""
    client = Client(config_path=mesh.client_json)
    try:
        before = mesh.envoy.stat("http.egress.downstream_cx_total")
        for i in range(200):
            client.get("bar" if i % 2 else "baz", f"/echo?{uid}-{i}")
        after = mesh.envoy.stat("http.egress.downstream_cx_total")
    finally:
        client.close()
    assert mesh.recorders["bar"].count(f"/echo?{uid}-") == 100
    assert after - before <= 2


def test_no_envoy_on_the_egress_says_where_the_address_came_from(tmp_path):
    port = free_port()
    path = write_client_json(tmp_path / "client.json", {"format": 1, "egress": {"address": "127.0.0.1", "port": port}})
    with Client(config_path=path) as client, pytest.raises(NoEgressError) as caught:
        client.get("bar", "/v1/rides")
    message = str(caught.value)
    assert f"no Envoy is listening on the egress 127.0.0.1:{port}" in message
    assert "ConnectionRefusedError" in message
    assert f"{path}, field egress" in message
    assert "call to service 'bar' was not sent" in message
    assert "Check: is Envoy running on this host" in message
    assert "ENVOY_CLIENT_CONFIG" in message


def test_no_envoy_with_address_from_environment(monkeypatch):
    port = free_port()
    monkeypatch.delenv("ENVOY_CLIENT_CONFIG", raising=False)
    monkeypatch.setenv("ENVOY_EGRESS", f"127.0.0.1:{port}")
    monkeypatch.setattr("envoy_client.config.DEFAULT_PATH", "/nonexistent/client.json")
    with Client() as client, pytest.raises(NoEgressError) as caught:
        client.get("bar", "/")
    assert f"the environment variable ENVOY_EGRESS=127.0.0.1:{port}" in str(caught.value)
    assert caught.value.port == port


def test_untrusted_egress_strips_the_router_headers(envoy_bin, tmp_path, uid):
    """Why the formula's egress must trust loopback callers: without use_remote_address and an
    internal_address_config covering 127.0.0.1, Envoy treats the app's request as external and
    strips x-envoy-max-retries and x-envoy-upstream-rq-timeout-ms (the route's 15 s timeout and no
    retries apply). Without response_headers_to_add, the error cannot name Envoy's flags."""
    app = Recorder("bar").start()
    admin, egress = free_port(), free_port()
    envoy = EnvoyProcess(envoy_bin, tmp_path / "envoy", egress_config(
        admin, egress, {"bar": app.port}, trusted=False, flags=False)).start()
    try:
        client = Client(egress=f"127.0.0.1:{egress}")
        with pytest.raises(UpstreamError) as caught:
            client.get("bar", f"/status/503?{uid}", retries=3, timeout_ms=1000)
        seen = app.requests(f"/status/503?{uid}")
        assert len(seen) == 1
        assert seen[0]["headers"]["x-envoy-expected-rq-timeout-ms"] == "15000"
        assert caught.value.flags is None
        assert "egress sends no x-envoy-response-flags header" in str(caught.value)
        client.close()
    finally:
        envoy.stop()
        app.stop()


def test_config_reload_when_client_json_changes(mesh, tmp_path, uid):
    path = write_client_json(tmp_path / "client.json", mesh.document)
    client = Client(config_path=path, reload_interval_s=0.001)
    try:
        assert client.get_json("bar", f"/echo?{uid}-1")["headers"]["x-envoy-expected-rq-timeout-ms"] == "4000"
        changed = json.loads(json.dumps(mesh.document))
        changed["upstreams"]["bar"]["timeout_ms"] = 3000
        write_client_json(path, changed)
        import time

        time.sleep(0.01)
        assert client.get_json("bar", f"/echo?{uid}-2")["headers"]["x-envoy-expected-rq-timeout-ms"] == "3000"
        # An invalid new file is refused; the client keeps the last good configuration.
        path.write_text("{not json")
        time.sleep(0.01)
        assert client.get_json("bar", f"/echo?{uid}-3")["headers"]["x-envoy-expected-rq-timeout-ms"] == "3000"
    finally:
        client.close()


def test_retry_on_adds_to_the_routes_own_conditions(mesh, uid):
    """x-envoy-retry-on is merged with the route's retry_on (Envoy ORs them): on qux, whose route
    retries on 5xx, retry_on="reset" still retries a 503; on bar (no route policy) it does not."""
    with pytest.raises(UpstreamError):
        mesh.client.get("qux", f"/status/503?{uid}", retry_on="reset", retries=1)
    assert mesh.recorders["qux"].count(f"/status/503?{uid}") == 2
    with pytest.raises(UpstreamError):
        mesh.client.get("bar", f"/status/503?{uid}", retry_on="reset", retries=1)
    assert mesh.recorders["bar"].count(f"/status/503?{uid}") == 1
