"""
The edge as real clients see it: a rendered front config (plain HTTP and TLS) run by the real envoy,
driven by curl (HTTP/1.1 and HTTP/2, --resolve, following redirects) and h2load. Clients send the
port they used in the Host header (app.example.test:8443), and a route's domains must match it on
either listener; a redirect to HTTPS must go to the configured https_port, keeping path and query,
with no port in the Location when the edge uses the standard ports 80 and 443.
"""

import re
import shutil
import subprocess
import sys

import pytest
import requests
import yaml
from envoy_bundle.configgen import generate

from tests.helpers.configgen_cases import GOLDEN, load_yaml
from tests.helpers.discovery import Process
from tests.helpers.net import free_port, http_get, wait_for

ROUTES = [
    {"name": "login", "domains": ["secure.example.test"], "match": {"path": "/login"}, "service": "app",
     "https_only": True},
    {"name": "secure", "domains": ["secure.example.test"], "match": {"prefix": "/"}, "service": "app"},
    {"name": "hello", "domains": ["app.example.test"], "match": {"prefix": "/"}, "service": "app"},
    {"name": "account", "match": {"prefix": "/account"}, "redirect": {"https": True, "prefix": "/my/account"}},
    {"name": "old", "match": {"path": "/old"}, "redirect": {"path": "/new"}},
    # Every other host name: another app, so an answer from `app` proves the domain matched.
    {"name": "root", "match": {"prefix": "/"}, "service": "fallback"},
]


def need(tool, package):
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (Debian package {package}, listed in .ci/debian-packages)")


def start_front(work, envoy_bin, app_ports, config_ports, listen_ports):
    """A front Envoy rendered for ``config_ports`` (http, https) and bound on ``listen_ports``:
    the same routes and redirects, on ports a test may bind (80 and 443 may be taken or privileged)."""
    admin = free_port()
    pillar = {
        "roles": ["front"],
        "listeners": {"front": {"address": "127.0.0.1", "http_port": config_ports[0], "https_port": config_ports[1]}},
        "defaults": {"upstreams": {"health_check": {"interval_ms": 1000, "no_traffic_interval_ms": 1000}}},
        "services": {"app": {"hosts": [f"127.0.0.1:{app_ports[0]}"]},
                     "fallback": {"hosts": [f"127.0.0.1:{app_ports[1]}"]}},
        "routes": ROUTES,
        # Self-signed certificates made for the golden files; curl and h2load do not verify them (-k).
        "tls": {"certificates": load_yaml(GOLDEN / "front" / "pillar.yaml")["tls"]["certificates"]},
    }
    host = {"node_id": "edge", "admin_port": admin, "log_dir": str(work)}
    config = yaml.safe_load(generate([], pillar, host))
    remap = dict(zip(config_ports, listen_ports, strict=True))
    for listener in config["static_resources"]["listeners"]:
        socket = listener["address"]["socket_address"]
        socket["port_value"] = remap[socket["port_value"]]
    path = work / f"envoy-{admin}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    envoy = Process([envoy_bin, "-c", str(path), "--disable-hot-restart", "--log-level", "warn",
                     "--concurrency", "1"], work / f"envoy-{admin}.log")
    url = f"http://127.0.0.1:{admin}"
    try:
        wait_for(lambda: requests.get(url + "/ready", timeout=2).status_code == 200, timeout=30, what="envoy LIVE")
        wait_for(lambda: requests.get(url + "/clusters", timeout=2).text.count("health_flags::healthy") == 2,
                 timeout=30, what="app and fallback healthy")
    except Exception:
        envoy.stop()
        raise
    return envoy, url


@pytest.fixture(scope="module")
def edge(tmp_path_factory, envoy_bin):
    """Front on free ports, as configured (like the documented 8080/8443)."""
    work = tmp_path_factory.mktemp("edge")
    app_ports, http_port, https_port = (free_port(), free_port()), free_port(), free_port()
    apps = [Process([sys.executable, "-m", "tests.helpers.app", "--port", str(port), "--name", name],
                    work / f"{name}.log") for name, port in zip(("app", "fallback"), app_ports, strict=True)]
    envoy = None
    try:
        for port in app_ports:
            wait_for(lambda port=port: http_get(f"http://127.0.0.1:{port}/healthcheck")[0] == 200, timeout=30,
                     what=f"app on {port}")
        envoy, admin = start_front(work, envoy_bin, app_ports, (http_port, https_port), (http_port, https_port))
        yield {"http": http_port, "https": https_port, "work": work, "app_ports": app_ports, "admin": admin}
    finally:
        if envoy:
            envoy.stop()
        for app in apps:
            app.stop()


def curl(*args):
    """(http version, status, headers, body) of the last response curl got."""
    need("curl", "curl")
    proc = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", *args], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.replace("\r\n", "\n").split("\n\n")
    head_index = max(i for i, block in enumerate(blocks) if block.startswith("HTTP/"))
    status_line, *lines = blocks[head_index].split("\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    version, status = status_line.split()[:2]
    return version, int(status), headers, "\n\n".join(blocks[head_index + 1:])


def resolve(name, *ports):
    return [arg for port in ports for arg in ("--resolve", f"{name}:{port}:127.0.0.1")]


# --- a Host header with a port ------------------------------------------------------------------

def test_host_with_port_matches_domains_over_plain_http1(edge):
    port = edge["http"]
    version, status, headers, body = curl("--http1.1", *resolve("app.example.test", port),
                                          f"http://app.example.test:{port}/hello")
    assert (version, status, body) == ("HTTP/1.1", 200, "app GET /hello\n")
    assert headers["x-upstream-host"] == f"app.example.test:{port}"  # forwarded as the client sent it


def test_host_with_port_matches_domains_over_plain_h2c(edge):
    port = edge["http"]
    version, status, _, body = curl("--http2-prior-knowledge", *resolve("app.example.test", port),
                                    f"http://app.example.test:{port}/hello")
    assert (version, status, body) == ("HTTP/2", 200, "app GET /hello\n")


@pytest.mark.parametrize("protocol, expected", [("--http2", "HTTP/2"), ("--http1.1", "HTTP/1.1")])
def test_host_with_port_matches_domains_over_tls(edge, protocol, expected):
    port = edge["https"]
    version, status, headers, body = curl(protocol, "-k", *resolve("app.example.test", port),
                                          f"https://app.example.test:{port}/hello")
    assert (version, status, body) == (expected, 200, "app GET /hello\n")
    assert headers["x-upstream-host"] == f"app.example.test:{port}"


def served_by(admin):
    """{cluster: 2xx answers so far} for the two upstreams."""
    text = requests.get(admin + "/stats?filter=upstream_rq_2xx$", timeout=5).text
    found = dict(line.split(": ") for line in text.splitlines() if line.startswith("cluster."))
    return {name: int(found.get(f"cluster.{name}.upstream_rq_2xx", 0)) for name in ("app", "fallback")}


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_h2load_with_a_host_port_gets_only_2xx_from_the_route(edge, scheme):
    need("h2load", "nghttp2-client")
    port = edge[scheme]
    before = served_by(edge["admin"])
    proc = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "10", f"--connect-to=127.0.0.1:{port}",
                           f"{scheme}://app.example.test:{port}/hello"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded" in proc.stdout, proc.stdout
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", proc.stdout)
    assert codes and codes.groups() == ("2000", "0", "0", "0"), proc.stdout
    after = served_by(edge["admin"])
    assert (after["app"] - before["app"], after["fallback"] - before["fallback"]) == (2000, 0)


# --- redirects ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["secure.example.test", "secure.example.test:{http}"])
def test_https_only_redirects_to_the_configured_https_port(edge, host):
    host = host.format(http=edge["http"])
    _, status, headers, _ = curl("-H", f"Host: {host}", f"http://127.0.0.1:{edge['http']}/login?next=/a")
    assert status == 301
    assert headers["location"] == f"https://secure.example.test:{edge['https']}/login?next=/a"


def test_curl_follows_the_https_only_redirect_to_the_page(edge):
    ports = (edge["http"], edge["https"])
    version, status, _, body = curl("-L", "-k", *resolve("secure.example.test", *ports),
                                    f"http://secure.example.test:{edge['http']}/login?next=/a")
    assert (status, body) == (200, "app GET /login?next=/a\n")


def test_https_redirect_route_goes_to_the_https_port(edge):
    _, status, headers, _ = curl("-H", "Host: other.example.test", f"http://127.0.0.1:{edge['http']}/account/x?y=1")
    assert status == 301
    assert headers["location"] == f"https://other.example.test:{edge['https']}/my/account/x?y=1"


def test_a_path_redirect_keeps_the_port_the_client_used(edge):
    port = edge["http"]
    _, status, headers, _ = curl(*resolve("other.example.test", port), f"http://other.example.test:{port}/old?q=1")
    assert status == 301
    assert headers["location"] == f"http://other.example.test:{port}/new?q=1"


def test_standard_ports_redirect_without_a_port(edge, envoy_bin):
    """Rendered for http_port 80 and https_port 443 (bound elsewhere here): no port in the Location."""
    http_port, https_port = free_port(), free_port()
    envoy, _ = start_front(edge["work"], envoy_bin, edge["app_ports"], (80, 443), (http_port, https_port))
    try:
        for host in ("secure.example.test", "secure.example.test:80"):
            _, status, headers, _ = curl("-H", f"Host: {host}", f"http://127.0.0.1:{http_port}/login?next=/a")
            assert (status, headers["location"]) == (301, "https://secure.example.test/login?next=/a"), host
    finally:
        envoy.stop()
