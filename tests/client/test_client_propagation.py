"""
Propagation through the WSGI and ASGI middleware into outbound calls: an inbound request through
the real Envoy ingress reaches an app; the app calls ``bar`` through the egress; the headers ``bar``
received carry the inbound request id and tracing headers, and the timeout Envoy enforced is capped
by the inbound deadline (x-envoy-expected-rq-timeout-ms, set by the ingress route's timeout).
"""

import asyncio
import json
import socketserver
import threading
import time
import urllib.parse
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import envoy_client
import pytest
from envoy_client import ASGIMiddleware, DeadlineExceededError, WSGIMiddleware

from tests.helpers.egress import ASGIServer
from tests.helpers.net import http_get

INBOUND = {
    "x-request-id": "rid-0af7651916cd43dd8448eb211c80319c",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "congo=t61rcWkgMzE",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid": "e457b5a2e4d86bd1",
    "x-b3-parentspanid": "05e3ac9a4f6e3b90",
    "x-b3-sampled": "1",
    "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    "x-ot-span-context": "0af7651916cd43dd;b7ad6b7169203331;0af7651916cd43dd",
}
# The ingress route's timeout in tests/client/conftest.py; bar's own timeout (4000) is above it.
INGRESS_TIMEOUT_MS = 3000


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def calling_wsgi_app(client):
    """A Flask-style app reduced to WSGI: /call/<service>?<token> calls <service> /echo?<token>
    and answers what that service received, and the policy the call was sent with."""

    def app(environ, start_response):
        service = environ["PATH_INFO"].rsplit("/", 1)[1]
        token = environ.get("QUERY_STRING", "")
        policy = client.policy(service)
        answer = client.get_json(service, f"/echo?{token}")
        body = json.dumps({"received": answer["headers"], "timeout_source": policy.sources["timeout_ms"]}).encode()
        start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
        return [body]

    return app


def calling_asgi_app(client):
    async def app(scope, receive, send):
        service = scope["path"].rsplit("/", 1)[1]
        token = scope["query_string"].decode()
        # A blocking call from async code: asyncio.to_thread copies the context into the thread.
        answer = await asyncio.to_thread(client.get_json, service, f"/echo?{token}")
        body = json.dumps({"received": answer["headers"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture(scope="module")
def wsgi_server(mesh):
    server = ThreadingWSGIServer(("127.0.0.1", mesh.app_ports["wsgi"]), _QuietHandler)
    server.set_app(WSGIMiddleware(calling_wsgi_app(mesh.client)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def asgi_server(mesh):
    server = ASGIServer(ASGIMiddleware(calling_asgi_app(mesh.client)), port=mesh.app_ports["asgi"]).start()
    yield server
    server.stop()


def through_ingress(mesh, app, path, headers):
    status, body = http_get(f"http://127.0.0.1:{mesh.ingress_port}{path}", timeout=10,
                            headers={"Host": app, **headers})
    assert status == 200, body
    return json.loads(body)


def assert_propagated(received):
    for name, value in INBOUND.items():
        assert received.get(name) == value, name
    assert "x-not-propagated" not in received
    # Capped by the inbound deadline: the ingress gave the app 3000 ms, part of it already spent.
    assert 0 < int(received["x-envoy-expected-rq-timeout-ms"]) <= INGRESS_TIMEOUT_MS


def test_wsgi_propagates_ids_and_deadline(mesh, wsgi_server, uid):
    answer = through_ingress(mesh, "wsgi", f"/call/bar?{uid}", {**INBOUND, "x-not-propagated": "1"})
    assert_propagated(answer["received"])
    assert answer["timeout_source"].startswith("the inbound deadline")
    assert "otherwise 4000 from" in answer["timeout_source"]
    seen = mesh.recorders["bar"].requests(f"/echo?{uid}")
    assert len(seen) == 1 and seen[0]["headers"]["x-request-id"] == INBOUND["x-request-id"]


def test_asgi_propagates_ids_and_deadline(mesh, asgi_server, uid):
    answer = through_ingress(mesh, "asgi", f"/call/bar?{uid}", {**INBOUND, "x-not-propagated": "1"})
    assert_propagated(answer["received"])


def test_asgi_requests_in_flight_together_keep_their_own_ids(mesh, uid):
    """Concurrent requests on one event loop: each outbound call carries its own request's id."""
    client = mesh.client

    async def app(scope, receive, send):
        await asyncio.sleep(0.05)  # both requests are now in flight
        answer = await asyncio.to_thread(client.get_json, "bar", f"/echo?{uid}-{scope['path'][1:]}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer["headers"]["x-request-id"].encode()})

    async def call(middleware, name):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": f"/{name}", "headers": [(b"x-request-id", f"rid-{name}".encode())]}
        await middleware(scope, receive, send)
        return sent[-1]["body"].decode()

    async def main():
        middleware = ASGIMiddleware(app)
        return await asyncio.gather(call(middleware, "one"), call(middleware, "two"))

    assert asyncio.run(main()) == ["rid-one", "rid-two"]
    assert envoy_client.current() is None


def test_wsgi_streaming_response_keeps_the_context(mesh, uid):
    """A response body produced after the app returned (a generator) still calls with the ids."""
    client = mesh.client

    def app(environ, start_response):
        start_response("200 OK", [("content-type", "text/plain")])

        def body():
            yield b"first "
            yield client.get_json("bar", f"/echo?{uid}")["headers"]["x-request-id"].encode()

        return body()

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_REQUEST_ID": "rid-streamed"}
    result = WSGIMiddleware(app)(environ, lambda status, headers, exc_info=None: None)
    assert envoy_client.current() is None
    assert b"".join(result) == b"first rid-streamed"
    result.close()


def test_exhausted_deadline_raises_before_sending(mesh, uid):
    """The inbound request allowed 50 ms; the app spent 60 before calling: nothing is sent."""
    client = mesh.client
    errors = []

    def app(environ, start_response):
        time.sleep(0.06)
        try:
            client.get("bar", f"/echo?{uid}")
        except DeadlineExceededError as exc:
            errors.append(exc)
        start_response("504 Gateway Timeout", [])
        return [b""]

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS": "50"}
    list(WSGIMiddleware(app)(environ, lambda status, headers, exc_info=None: None))
    assert len(errors) == 1
    assert errors[0].whose == "deadline"
    message = str(errors[0])
    assert "x-envoy-expected-rq-timeout-ms: 50" in message
    assert "below the smallest timeout allowed for 'bar' (10 ms)" in message
    assert mesh.recorders["bar"].count(f"/echo?{uid}") == 0


def test_deadline_caps_a_direct_inbound_context(mesh, uid):
    """envoy_client.inbound() for code that is not behind the middleware (a queue worker)."""
    received = time.monotonic() - 0.4
    with envoy_client.inbound({"X-Envoy-Expected-Rq-Timeout-Ms": "1000", "X-Request-Id": "rid-direct"},
                              received_at=received):
        answer = mesh.client.get_json("bar", f"/echo?{urllib.parse.quote(uid)}")
    assert answer["headers"]["x-request-id"] == "rid-direct"
    assert int(answer["headers"]["x-envoy-expected-rq-timeout-ms"]) <= 600
