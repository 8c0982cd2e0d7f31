"""
HTTP to processes on this host (Envoy's admin API, the local discovery service's health check):
always with a timeout, and never through a proxy, whatever ``http_proxy`` the minion has.
"""

import urllib.error
import urllib.request

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):
    """Nothing answered (connection refused, timeout)."""


def request(url, method="GET", timeout=3.0, data=None):
    """(status, body text); HTTP errors are answers too. Raises ``Unreachable``."""
    body = data if data is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, method=method, data=body)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as exc:
        raise Unreachable(f"{method} {url} failed: {exc}") from exc


def answers_ok(url, timeout=2.0):
    """True when ``url`` answers 200."""
    try:
        return request(url, timeout=timeout)[0] == 200
    except Unreachable:
        return False
