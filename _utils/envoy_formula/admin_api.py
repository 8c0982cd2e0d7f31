"""
Envoy's admin API, on 127.0.0.1 only (the generator never binds it elsewhere), with timeouts.
"""

import json
import urllib.parse

from . import local_http
from .errors import EnvoyFormulaError

TIMEOUT_S = 3.0


class Admin:
    def __init__(self, port, timeout=TIMEOUT_S):
        self.port = int(port)
        self.timeout = timeout

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, timeout=None):
        """(status, body); EnvoyFormulaError when nothing answers."""
        try:
            return local_http.request(self.url(path), timeout=timeout or self.timeout)
        except local_http.Unreachable as exc:
            raise EnvoyFormulaError(f"envoy admin {exc}") from exc

    def get_json(self, path, timeout=None):
        status, body = self.get(path, timeout)
        if status != 200:
            raise EnvoyFormulaError(f"envoy admin GET {path} answered HTTP {status}: {body.strip()[:200]}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EnvoyFormulaError(f"envoy admin GET {path}: not JSON ({exc})") from exc

    def post(self, path):
        try:
            status, body = local_http.request(self.url(path), method="POST", timeout=self.timeout)
        except local_http.Unreachable as exc:
            raise EnvoyFormulaError(f"envoy admin {exc}") from exc
        if status != 200:
            raise EnvoyFormulaError(f"envoy admin POST {path} answered HTTP {status}: {body.strip()[:200]}")
        return True

    def server_info(self):
        """/server_info, or {} when Envoy does not answer."""
        try:
            return self.get_json("/server_info", timeout=1.5)
        except EnvoyFormulaError:
            return {}

    def hot_restart_version(self):
        """The running Envoy's hot restart version, or None when it does not answer."""
        try:
            status, body = self.get("/hot_restart_version", timeout=1.5)
        except EnvoyFormulaError:
            return None
        return body.strip() if status == 200 and body.strip() else None

    def listener_addresses(self):
        """{(address, port)} of the listeners Envoy has bound."""
        data = self.get_json("/listeners?format=json")
        out = set()
        for listener in data.get("listener_statuses", []):
            sock = (listener.get("local_address") or {}).get("socket_address") or {}
            if "port_value" in sock:
                out.add((sock["address"], int(sock["port_value"])))
        return out

    def stats(self, regex=None):
        """Counters and gauges as {name: value}, filtered by ``regex``."""
        path = "/stats?format=json" + (f"&filter={urllib.parse.quote(regex)}" if regex else "")
        return {s["name"]: s["value"] for s in self.get_json(path).get("stats", []) if "value" in s}


def seconds(text):
    """Envoy's ``"123s"`` durations as an int, None when absent."""
    try:
        return int(str(text).rstrip("s"))
    except ValueError:
        return None
