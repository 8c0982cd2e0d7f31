"""
The mesh lab's apps, each a plain Python process with nothing but the standard library (and
``envoy_client`` for foo), the way many real services are written:

- ``bar``: a stdlib ``http.server.ThreadingHTTPServer``. Logs each request's ``x-request-id`` and
  answers with its host name: ``{"service": "bar", "host": ..., "request_id": ..., "path": ...}``
  (``/sleep/<ms>/...`` answers after that long; ``.../status/<code>`` answers with that status).
- ``foo``: a WSGI app behind ``envoy_client.WSGIMiddleware`` (the propagation middleware), served by
  a small threaded stdlib server. ``/foo/...`` calls bar through the local Envoy egress with
  ``envoy_client.get("bar", ...)`` and returns bar's answer; ``/direct/...`` makes the same call
  with an ``envoy_client.Client`` pointed at a bar app over the network (the benchmark's baseline:
  the same app work, no Envoy).
- ``zipkin``: a Zipkin-compatible collector (``POST /api/v2/spans``, JSON v2) that appends every
  span it gets to a JSON-lines file.

Every app serves ``/healthcheck`` and logs one line per request to its ``--log`` file:
``<unix time> <service> <x-request-id> <method> <path> <status>``.

    python -m tests.helpers.mesh_apps bar --port 18082 --log /var/log/apps/bar.log
"""

import argparse
import itertools
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class AppLog:
    def __init__(self, path, service):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.handle = open(path, "a", buffering=1)
        self.service = service
        self.lock = threading.Lock()

    def request(self, request_id, method, path, status):
        with self.lock:
            self.handle.write(f"{time.time():.6f} {self.service} {request_id or '-'} {method} {path} {status}\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy's and the clients' connections are reused
    # TCP_NODELAY: http.server sends the headers and the body in two writes; with Nagle on, the body
    # waits for the peer's delayed ACK of the headers (~40 ms per response).
    disable_nagle_algorithm = True

    def send_body(self, status, body, content_type="application/json", headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # our own log, one line per request
        pass

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)
                if size == 0:
                    return body
                body += chunk[:-2]
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


# --- bar: a plain stdlib server -------------------------------------------------------------------


def serve_bar(args):
    log = AppLog(args.log, "bar")
    host = socket.gethostname()

    class BarHandler(Handler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            request_id = self.headers.get("x-request-id")
            if self.path == "/healthcheck":
                self.send_body(200, "OK", "text/plain")
                return
            if self.path.startswith("/sleep/"):  # /sleep/<ms>: a slow answer
                time.sleep(int(self.path.split("/")[2]) / 1000.0)
            # .../status/<code>: answer with that status (failures the dashboards must show).
            status = int(self.path.rsplit("/status/", 1)[1].split("/")[0]) if "/status/" in self.path else 200
            body = json.dumps({"service": "bar", "host": host, "request_id": request_id, "path": self.path})
            self.send_body(status, body)
            log.request(request_id, "GET", self.path, status)

    serve(args, BarHandler)


# --- foo: WSGI + envoy_client -------------------------------------------------------------------


def make_foo_app(log, direct_urls):
    import envoy_client

    # /direct: the same client library and call, pointed at a bar app instead of the local egress
    # (the benchmark's baseline: identical app work, no Envoy on the way).
    direct = itertools.cycle([envoy_client.Client(egress=url.split("//", 1)[-1]) for url in direct_urls] or [None])
    host = socket.gethostname()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if path == "/healthcheck":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"OK"]
        try:
            if path.startswith("/direct"):
                response = next(direct).get("bar", path, raise_for_status=False)
            else:
                response = envoy_client.get("bar", path, raise_for_status=False)
            status, body = response.status_code, response.content
        except envoy_client.EnvoyClientError as exc:
            status, body = 502, f"foo: {type(exc).__name__}: {exc}".encode()
        reason = "OK" if status == 200 else "Bad Gateway"
        start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("x-foo-host", host)])
        log.request(request_id, "GET", path, status)
        return [body]

    return envoy_client.WSGIMiddleware(app)


def serve_foo(args):
    log = AppLog(args.log, "foo")
    app = make_foo_app(log, args.direct_bar)

    class WSGIHandler(Handler):
        """Just enough WSGI on http.server for GET: environ in, status, headers and body out."""

        def do_GET(self):  # noqa: N802
            path, _, query = self.path.partition("?")
            environ = {
                "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "foo",
                "SERVER_PORT": str(args.port), "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http", "wsgi.input": self.rfile, "wsgi.errors": sys.stderr,
                "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            }
            for name, value in self.headers.items():
                key = name.upper().replace("-", "_")
                if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                    key = "HTTP_" + key
                environ[key] = value
            started = {}

            def start_response(status, headers, exc_info=None):
                started["status"], started["headers"] = status, headers

            result = app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            code = int(started["status"].split()[0])
            headers = [(k, v) for k, v in started["headers"] if k.lower() != "content-type"]
            content_type = dict((k.lower(), v) for k, v in started["headers"]).get("content-type", "text/plain")
            self.send_body(code, body, content_type, headers)

    serve(args, WSGIHandler)


# --- a Zipkin-compatible collector -------------------------------------------------------------


def serve_zipkin(args):
    os.makedirs(os.path.dirname(args.spans), exist_ok=True)
    spans_file = open(args.spans, "a", buffering=1)
    lock = threading.Lock()

    class ZipkinHandler(Handler):
        def do_POST(self):  # noqa: N802
            raw = self.read_body()
            try:
                spans = json.loads(raw)
                assert isinstance(spans, list)
            except (ValueError, AssertionError):
                self.send_body(400, "expected a JSON list of spans", "text/plain")
                return
            with lock:
                for span in spans:
                    spans_file.write(json.dumps(span) + "\n")
            self.send_body(202, "", "text/plain")

        def do_GET(self):  # noqa: N802
            self.send_body(200, "OK", "text/plain")

    serve(args, ZipkinHandler)


def serve(args, handler):
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", choices=["foo", "bar", "zipkin"])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", default="/var/log/apps/app.log")
    parser.add_argument("--spans", default="/var/log/zipkin/spans.jsonl")
    parser.add_argument("--direct-bar", action="append", default=[],
                        help="foo: bar app base URLs for /direct (no Envoy), taken in turn")
    args = parser.parse_args(argv)
    {"foo": serve_foo, "bar": serve_bar, "zipkin": serve_zipkin}[args.app](args)


if __name__ == "__main__":
    main()
