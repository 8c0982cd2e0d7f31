"""
A real Envoy laid out like a sidecar host's egress, for the client library's tests and benchmark:

- :class:`Recorder`: a small stdlib upstream app (in-process, threaded) that records every request
  it gets (method, path, headers, body) and fails, sleeps or flaps on demand by path:
  ``/status/<code>``, ``/sleep/<ms>``, ``/flaky/<key>/<n>`` (503 for the first n requests of key),
  ``/text`` (a body that is not JSON), ``/empty`` (204); anything else answers 200 with JSON (what
  it got). A query string is ignored for this, so tests make each path unique with one.
- :func:`egress_config`: a static bootstrap with the egress listener on 127.0.0.1 (one virtual
  host per upstream service, Host = service name), optionally an ingress listener in front of local
  apps, and the two things the client needs from the egress: trust in loopback callers (so Envoy
  honours the x-envoy-* router headers) and the ``x-envoy-response-flags`` response header.
- :class:`EnvoyProcess`: the real envoy binary running such a config.
- :class:`ASGIServer`: a minimal HTTP/1.1 server for an ASGI app (GET without a body), enough to put
  an ASGI app behind the ingress listener without a server dependency.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .net import free_port, http_get, wait_for

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FLAGS_HEADER = {"header": {"key": "x-envoy-response-flags", "value": "%RESPONSE_FLAGS%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


# --- the upstream app ---------------------------------------------------------------------------

class Recorder:
    """An upstream app that records what reaches it. ``requests(prefix)`` lists recorded requests
    whose path starts with ``prefix`` (each a dict: method, path, headers (lower-case), body)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._log: list[dict] = []
        self._flaky: dict[str, int] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                entry = {"method": self.command, "path": self.path,
                         "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                with recorder._lock:
                    recorder._log.append(entry)
                status, payload, ctype = recorder._answer(self.command, self.path, entry)
                self.send_response(status)
                if payload is not None:
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(payload)))
                self.end_headers()
                if payload is not None and self.command != "HEAD":
                    try:
                        self.wfile.write(payload)
                    except (BrokenPipeError, ConnectionResetError):  # Envoy gave up (timeout)
                        pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"recorder-{name}", daemon=True)

    def _answer(self, method, target, entry):
        path = target.split("?", 1)[0]
        match = re.fullmatch(r"/status/(\d{3})", path)
        if match:
            return int(match.group(1)), f"{self.name} says {match.group(1)}\n".encode(), "text/plain"
        match = re.fullmatch(r"/sleep/(\d+)", path)
        if match:
            time.sleep(int(match.group(1)) / 1000.0)
        match = re.fullmatch(r"/flaky/([\w-]+)/(\d+)", path)
        if match:
            with self._lock:
                seen = self._flaky.get(match.group(1), 0)
                self._flaky[match.group(1)] = seen + 1
            if seen < int(match.group(2)):
                return 503, b"flaky\n", "text/plain"
        if path == "/text":
            return 200, b"this is not json\n", "text/plain"
        if path == "/empty":
            return 204, None, ""
        payload = {"service": self.name, "method": method, "path": target, "headers": entry["headers"],
                   "body": entry["body"].decode("utf-8", "replace")}
        return 200, json.dumps(payload).encode(), "application/json"

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self, prefix: str = "/") -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._log if e["path"].startswith(prefix)]

    def count(self, prefix: str = "/") -> int:
        return len(self.requests(prefix))

    def clear(self) -> None:
        with self._lock:
            self._log.clear()


# --- Envoy --------------------------------------------------------------------------------------

def _cluster(name, port):
    return {"name": name, "connect_timeout": "0.25s", "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def _route(cluster, timeout_ms, retries=0):
    route = {"cluster": cluster, "timeout": f"{timeout_ms / 1000:.3f}s"}
    if retries:
        route["retry_policy"] = {"retry_on": "5xx,connect-failure,refused-stream", "num_retries": retries}
    return {"match": {"prefix": "/"}, "route": route}


def egress_hcm(services, trusted=True, flags=True, route_timeout_ms=15000, route_retries=None):
    """The egress HTTP connection manager. ``services``: name -> upstream port. ``trusted``: treat
    loopback callers as internal (``use_remote_address`` + ``internal_address_config``), without
    which Envoy strips the x-envoy-* router headers. ``flags``: add ``x-envoy-response-flags``.
    ``route_retries``: name -> the route's own retry policy num_retries (none by default, so that
    the retries observed come from the client's headers)."""
    route_retries = route_retries or {}
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "egress",
        "generate_request_id": True,
        "stream_idle_timeout": "300s",
        "http_filters": [ROUTER],
        "route_config": {"name": "egress", "virtual_hosts": [
            {"name": name, "domains": [name, f"{name}:*"],
             "routes": [_route(name, route_timeout_ms, route_retries.get(name, 0))]}
            for name in services]},
    }
    if trusted:
        hcm["use_remote_address"] = True
        hcm["internal_address_config"] = {"cidr_ranges": [{"address_prefix": "127.0.0.1", "prefix_len": 32}]}
    if flags:
        hcm["route_config"]["response_headers_to_add"] = [FLAGS_HEADER]
        hcm["local_reply_config"] = {"mappers": [{"filter": {"response_flag_filter": {}},
                                                  "headers_to_add": [FLAGS_HEADER]}]}
    return hcm


def ingress_hcm(apps, timeout_ms=3000):
    """An ingress (as on a sidecar host: not trusted, a route timeout): Host = app name -> local app."""
    return {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress",
        "generate_request_id": True,
        "http_filters": [ROUTER],
        "route_config": {"name": "ingress", "virtual_hosts": [
            {"name": name, "domains": [name, f"{name}:*"], "routes": [_route(f"local_{name}", timeout_ms)]}
            for name in apps]},
    }


def egress_config(admin_port, egress_port, services, ingress_port=None, apps=None, ingress_timeout_ms=3000,
                  **egress_options):
    """A static bootstrap: the egress listener to ``services`` (name -> port), and with
    ``ingress_port`` an ingress listener to local ``apps`` (name -> port)."""
    listeners = [{"name": "egress",
                  "address": {"socket_address": {"address": "127.0.0.1", "port_value": egress_port}},
                  "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                  "typed_config": egress_hcm(services, **egress_options)}]}]}]
    clusters = [_cluster(name, port) for name, port in services.items()]
    if ingress_port is not None:
        listeners.append({"name": "ingress",
                          "address": {"socket_address": {"address": "127.0.0.1", "port_value": ingress_port}},
                          "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                          "typed_config": ingress_hcm(apps, ingress_timeout_ms)}]}]})
        clusters += [_cluster(f"local_{name}", port) for name, port in apps.items()]
    return {"node": {"id": "client-test", "cluster": "client-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


class EnvoyProcess:
    """The real envoy with one static config (own process group, unique base id)."""

    def __init__(self, envoy_bin, workdir, config):
        self.envoy_bin = envoy_bin
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.proc = None
        self.log_path = self.workdir / "envoy.log"

    def start(self):
        path = self.workdir / "envoy.yaml"
        path.write_text(json.dumps(self.config, indent=1) + "\n")
        self.proc = subprocess.Popen(
            [self.envoy_bin, "-c", str(path), "--base-id", str(self.admin_port), "--concurrency", "1",
             "--log-level", "warning", "--log-path", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._ready, timeout=30, what=f"envoy admin /ready on {self.admin_port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"envoy did not get ready: {self.log_text()[-3000:]}") from None
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.log_text()[-3000:]}")
        return http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)[0] == 200

    def log_text(self):
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stat(self, name):
        """One counter or gauge from admin /stats (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter=^{re.escape(name)}$",
                                    timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        return 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def write_client_json(path, document):
    """Write a client.json atomically (a temp file renamed into place), as the formula should."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# --- a minimal ASGI server ----------------------------------------------------------------------

class ASGIServer:
    """Serves an ASGI 3 app over HTTP/1.1 on 127.0.0.1 in a thread with its own event loop: one
    request per connection, no request body. Enough for an app behind the test ingress."""

    def __init__(self, app, port=None):
        self.app = app
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self._run, name="asgi-server", daemon=True)
        self._started = threading.Event()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._started.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            path, _, query = target.partition("?")
            headers = []
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                     "root_path": "", "headers": headers, "server": ("127.0.0.1", self.port), "client": None}
            status, out_headers, body = 500, [], []

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                nonlocal status, out_headers
                if message["type"] == "http.response.start":
                    status, out_headers = message["status"], list(message.get("headers", []))
                elif message["type"] == "http.response.body":
                    body.append(message.get("body", b""))

            await self.app(scope, receive, send)
            payload = b"".join(body)
            response = [f"HTTP/1.1 {status} X".encode()]
            response += [name + b": " + value for name, value in out_headers
                         if name.lower() not in (b"content-length", b"connection")]
            response += [f"content-length: {len(payload)}".encode(), b"connection: close", b"", payload]
            writer.write(b"\r\n".join(response))
            await writer.drain()
        finally:
            writer.close()

    def start(self):
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self):
        async def shutdown():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
