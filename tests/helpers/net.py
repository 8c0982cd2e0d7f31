"""Loopback ports and waiting for things to come up."""

import random
import socket
import time
import urllib.request

# Below Linux's ephemeral range (32768-60999): a port the kernel picked for us is one it hands out
# again as the source port of any outgoing connection, which then holds it when a test's Envoy
# binds it (CI saw "cannot bind 0.0.0.0:53373: Address already in use").
_PORT_RANGE = (20000, 32767)
_given = set()


def free_port(host="127.0.0.1"):
    """A TCP port, free right now on ``host`` and on every address, that this test run has not
    handed out before, outside the ephemeral range."""
    for _ in range(1000):
        port = random.randint(*_PORT_RANGE)
        if port not in _given and _bindable(host, port) and _bindable("0.0.0.0", port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def _bindable(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for(predicate, timeout=30.0, interval=0.1, what="condition"):
    """Poll ``predicate`` until it returns a truthy value; that value is returned."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing polled is not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def http_get(url, timeout=5.0, headers=None):
    """(status, body) of a GET, without raising on HTTP errors."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
