"""
The client's pure logic, without Envoy: client.json validation (every error names the file and the
field), the lookup order, per-call overrides clamped into the bounds, idempotency, deadlines and
the headers a policy sends.
"""

import json
import re
import socket
import threading
import time
from pathlib import Path

import envoy_client
import pytest
from envoy_client import (
    Client,
    ClientTimeoutError,
    ConfigError,
    DeadlineExceededError,
    EgressConnectionError,
    Policy,
    load_config,
    parse_config,
    read_config,
)
from envoy_client.config import LIBRARY_DEFAULTS
from envoy_client.context import capture, inbound
from envoy_client.policy import effective_policy

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"

FULL = {
    "format": 1,
    "egress": {"address": "127.0.0.1", "port": 9001},
    "defaults": {"timeout_ms": 5000, "retries": 1, "retry_on": "5xx,connect-failure,refused-stream"},
    "bounds": {"timeout_ms": {"min": 10, "max": 60000}, "per_try_timeout_ms": {"min": 10, "max": 60000},
               "retries": {"min": 0, "max": 3}},
    "upstreams": {
        "bar": {"timeout_ms": 15000, "per_try_timeout_ms": None, "retries": 1,
                "retry_on": "5xx,connect-failure,refused-stream",
                "bounds": {"timeout_ms": {"min": 100, "max": 20000}, "retries": {"min": 0, "max": 2}}},
        "rides": {"per_try_timeout_ms": 500, "retries": 2},
    },
}


def parse(document):
    return parse_config(document, "/etc/envoy/client.json")


def with_change(path, value):
    """FULL with one field set (path: dotted; value _DELETE removes it)."""
    document = json.loads(json.dumps(FULL))
    *parents, last = path.split(".")
    node = document
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return document


_DELETE = object()


# --- client.json --------------------------------------------------------------------------------

def test_full_document_resolves_per_service_with_sources():
    config = parse(FULL)
    assert (config.address, config.port) == ("127.0.0.1", 9001)
    bar = config.resolve("bar")
    assert bar.policy == Policy(15000, None, 1, "5xx,connect-failure,refused-stream")
    assert bar.sources["timeout_ms"] == "/etc/envoy/client.json upstreams.bar.timeout_ms"
    assert bar.bounds["retries"].max == 2 and bar.bounds["per_try_timeout_ms"].max == 60000
    assert bar.bound_sources["per_try_timeout_ms"] == "/etc/envoy/client.json bounds.per_try_timeout_ms"
    rides = config.resolve("rides")
    assert rides.policy == Policy(5000, 500, 2, "5xx,connect-failure,refused-stream")
    assert rides.sources["timeout_ms"] == "/etc/envoy/client.json defaults.timeout_ms"
    unknown = config.resolve("unknown")
    assert not unknown.known and unknown.policy.timeout_ms == 5000


def test_minimal_document_uses_library_defaults():
    config = parse({"format": 1, "egress": {"address": "::1", "port": 9001}})
    assert config.egress == "[::1]:9001"
    resolved = config.resolve("bar")
    assert resolved.policy == LIBRARY_DEFAULTS
    assert resolved.bounds == {}
    assert set(resolved.sources.values()) == {"the library default"}


@pytest.mark.parametrize(("change", "field", "problem"), [
    (("format", _DELETE), "format", "is required"),
    (("format", 2), "format", "must be 1 (this envoy_client reads format 1), not 2"),
    (("format", True), "format", "must be 1"),
    (("egress", _DELETE), "egress", "is required"),
    (("egress.port", "9001"), "egress.port", "must be an integer, not a string ('9001')"),
    (("egress.port", 70000), "egress.port", "must be between 1 and 65535, not 70000"),
    (("egress.address", ""), "egress.address", "must be an IP address or host name"),
    (("egress.adress", "x"), "egress.adress", "is not a known field (did you mean 'address'?)"),
    (("upstream", {}), "upstream", "is not a known field (did you mean 'upstreams'?)"),
    (("upstreams.bar.timeout_ms", True), "upstreams.bar.timeout_ms", "must be an integer, not a boolean (true)"),
    (("upstreams.bar.timeout_ms", 1.5), "upstreams.bar.timeout_ms", "must be an integer, not a number (1.5)"),
    (("upstreams.bar.timeout_ms", 0), "upstreams.bar.timeout_ms", "must be between 1 and 3600000, not 0"),
    (("upstreams.bar.timeout_ms", 30000), "upstreams.bar.timeout_ms",
     "(30000) is outside its bounds [100, 20000] from upstreams.bar.bounds.timeout_ms"),
    (("upstreams.bar.retries", 3), "upstreams.bar.retries",
     "(3) is outside its bounds [0, 2] from upstreams.bar.bounds.retries"),
    (("upstreams.rides.retries", 4), "upstreams.rides.retries", "(4) is outside its bounds [0, 3] from bounds.retries"),
    (("defaults.timeout_ms", 90000), "defaults.timeout_ms", "(90000) is outside its bounds [10, 60000]"),
    (("upstreams.bar.retry_on", "5xx connect-failure"), "upstreams.bar.retry_on",
     "must be a comma-separated list of Envoy retry conditions"),
    (("upstreams.bar.timeout", 5), "upstreams.bar.timeout", "is not a known field (did you mean 'timeout_ms'?)"),
    (("upstreams.Bar", {}), "upstreams.Bar", "is not a service name"),
    (("upstreams.bar.bounds.retries.min", 5), "upstreams.bar.bounds.retries.min", "(5) is above max (2)"),
    (("upstreams.bar.bounds.retries.max", _DELETE), "upstreams.bar.bounds.retries.max", "is required"),
    (("bounds.retry_on", {"min": 0, "max": 1}), "bounds.retry_on", "is not a known field"),
    (("upstreams", []), "upstreams", "must be a JSON object (service name -> settings), not a list"),
])
def test_invalid_documents_name_the_file_and_field(change, field, problem):
    with pytest.raises(ConfigError) as caught:
        parse(with_change(*change))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"/etc/envoy/client.json: {field}: ")
    assert problem in str(caught.value)


def test_unreadable_files_name_the_file(tmp_path):
    path = tmp_path / "client.json"
    path.write_text('{"format": 1, "format": 1}')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: has the key 'format' twice in one object")):
        read_config(path)
    path.write_text('{"format": 1,}')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: is not valid JSON: ") + ".* at line 1 column"):
        read_config(path)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'missing.json'}: does not exist")):
        read_config(tmp_path / "missing.json")


# --- lookup order -------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, monkeypatch):
    def write(name, port):
        path = tmp_path / name
        path.write_text(json.dumps({"format": 1, "egress": {"address": "127.0.0.1", "port": port}}))
        return path

    default = write("default.json", 9101)
    monkeypatch.setattr("envoy_client.config.DEFAULT_PATH", str(default))
    return {"explicit": write("explicit.json", 9100), "env": write("env.json", 9102), "default": default,
            "missing": tmp_path / "missing.json"}


def test_lookup_explicit_argument_first(files):
    env = {"ENVOY_CLIENT_CONFIG": str(files["env"]), "ENVOY_EGRESS": "127.0.0.1:9103"}
    assert load_config(files["explicit"], environ=env).port == 9100
    config = load_config(egress="127.0.0.2:9104", environ=env)
    assert (config.address, config.port, config.source) == ("127.0.0.2", 9104, "the egress argument '127.0.0.2:9104'")


def test_lookup_env_file_then_default_file_then_env_egress_then_default(files, monkeypatch):
    config = load_config(environ={"ENVOY_CLIENT_CONFIG": str(files["env"]), "ENVOY_EGRESS": "127.0.0.1:9103"})
    assert config.port == 9102
    assert config.source == (f"{files['env']}, field egress (the file named by ENVOY_CLIENT_CONFIG) "
                             "(ENVOY_EGRESS=127.0.0.1:9103 is set but a config file comes first)")
    config = load_config(environ={"ENVOY_EGRESS": "127.0.0.1:9103"})
    assert config.port == 9101 and config.source.startswith(f"{files['default']}, field egress")
    monkeypatch.setattr("envoy_client.config.DEFAULT_PATH", str(files["missing"]))
    config = load_config(environ={"ENVOY_EGRESS": "[::1]:9103"})
    assert (config.address, config.port) == ("::1", 9103)
    assert config.source == "the environment variable ENVOY_EGRESS=[::1]:9103"
    config = load_config(environ={})
    assert (config.address, config.port) == ("127.0.0.1", 9001)
    assert config.source.startswith("the library default 127.0.0.1:9001")


def test_lookup_env_file_must_exist(files):
    with pytest.raises(ConfigError, match="missing.json: does not exist"):
        load_config(environ={"ENVOY_CLIENT_CONFIG": str(files["missing"])})


@pytest.mark.parametrize("value", ["9001", "127.0.0.1", "127.0.0.1:port", "127.0.0.1:0", "::1:9001"])
def test_bad_egress_variable(files, monkeypatch, value):
    monkeypatch.setattr("envoy_client.config.DEFAULT_PATH", str(files["missing"]))
    with pytest.raises(ConfigError, match="^the environment variable ENVOY_EGRESS: "):
        load_config(environ={"ENVOY_EGRESS": value})


# --- the policy of one call ---------------------------------------------------------------------

def policy(service="bar", method="GET", overrides=None, **kwargs):
    return effective_policy(parse(FULL).resolve(service), method, overrides or Policy(), **kwargs)


def test_defaults_and_headers():
    p = policy()
    assert p.headers() == {"x-envoy-upstream-rq-timeout-ms": "15000", "x-envoy-max-retries": "1",
                           "x-envoy-retry-on": "5xx,connect-failure,refused-stream"}
    p = policy("rides")
    assert p.headers()["x-envoy-upstream-rq-per-try-timeout-ms"] == "500"


def test_overrides_within_bounds_and_clamped():
    p = policy(overrides=Policy(timeout_ms=800, retries=2, retry_on="reset"))
    assert (p.timeout_ms, p.retries, p.retry_on) == (800, 2, "reset")
    assert p.sources["timeout_ms"] == "the call argument timeout_ms=800"
    assert p.adjustments == ()
    p = policy(overrides=Policy(timeout_ms=50, retries=3, per_try_timeout_ms=5))
    assert (p.timeout_ms, p.retries, p.per_try_timeout_ms) == (100, 2, 10)
    assert len(p.adjustments) == 3
    assert p.sources["timeout_ms"].endswith(
        "clamped to min 100 (/etc/envoy/client.json upstreams.bar.bounds.timeout_ms)")


@pytest.mark.parametrize(("overrides", "error", "text"), [
    (Policy(timeout_ms=0), ValueError, "timeout_ms must be between 1 and 3600000, not 0"),
    (Policy(retries=-1), ValueError, "retries must be between 0 and 10"),
    (Policy(retries=True), TypeError, "retries must be an integer, not bool"),
    (Policy(timeout_ms=1.5), TypeError, "timeout_ms must be an integer, not float"),
    (Policy(retry_on="5xx,connect_failure"), ValueError, "retry_on must be a comma-separated list"),
    (Policy(retry_on="5xx,timeout"), ValueError, "unknown Envoy retry condition(s) timeout; known: 5xx"),
])
def test_nonsense_overrides_are_refused(overrides, error, text):
    with pytest.raises(error, match=re.escape(text)):
        policy(overrides=overrides)


@pytest.mark.parametrize(("method", "idempotent", "overrides", "retries"), [
    ("GET", None, Policy(), 1), ("HEAD", None, Policy(), 1), ("OPTIONS", None, Policy(), 1),
    ("PUT", None, Policy(), 1), ("DELETE", None, Policy(), 1),
    ("POST", None, Policy(), 0), ("PATCH", None, Policy(), 0),
    ("POST", True, Policy(), 1), ("POST", None, Policy(retries=2), 2), ("GET", False, Policy(), 0),
])
def test_retries_only_for_idempotent_methods_by_default(method, idempotent, overrides, retries):
    p = policy(method=method, overrides=overrides, idempotent=idempotent)
    assert p.retries == retries
    if retries == 0:
        assert p.headers()["x-envoy-max-retries"] == "0"
        assert "x-envoy-retry-on" not in p.headers()
        assert "not idempotent" in p.sources["retries"]


def test_deadline_caps_the_timeout():
    p = policy(remaining_ms=1234.7, budget_ms=3000)
    assert p.timeout_ms == 1234
    assert p.sources["timeout_ms"].startswith("the inbound deadline (1234 ms left of x-envoy-expected-rq-timeout-ms 3000")
    # A remaining budget above the timeout changes nothing.
    assert policy(remaining_ms=60000.0, budget_ms=60000).timeout_ms == 15000


def test_deadline_below_the_minimum_raises():
    with pytest.raises(DeadlineExceededError) as caught:
        policy(remaining_ms=99.0, budget_ms=3000)
    assert caught.value.minimum_ms == 100  # bar's bounds
    with pytest.raises(DeadlineExceededError):
        policy("rides", remaining_ms=-5.0, budget_ms=3000)
    assert policy("rides", remaining_ms=10.5, budget_ms=3000).timeout_ms == 10  # the global min


def test_per_try_timeout_not_below_the_timeout_is_dropped():
    p = policy("rides", remaining_ms=400.0, budget_ms=1000)
    assert (p.timeout_ms, p.per_try_timeout_ms) == (400, None)
    assert "x-envoy-upstream-rq-per-try-timeout-ms" not in p.headers()


# --- propagation context ------------------------------------------------------------------------

def test_capture_is_case_insensitive_and_keeps_only_propagated_headers():
    context = capture([("X-Request-ID", "a"), ("TraceParent", "tp"), ("Cookie", "secret"), ("b3", "x"),
                       ("X-Envoy-Expected-Rq-Timeout-Ms", "250")], received_at=100.0)
    assert context.headers == {"x-request-id": "a", "traceparent": "tp", "b3": "x"}
    assert (context.budget_ms, context.deadline) == (250, 100.25)
    assert context.remaining_ms(now=100.05) == pytest.approx(200.0)


@pytest.mark.parametrize("value", ["0", "", "abc", "-5", "1.5"])
def test_no_usable_expected_timeout_means_no_deadline(value):
    assert capture({"x-envoy-expected-rq-timeout-ms": value}).deadline is None


def test_inbound_context_is_scoped():
    assert envoy_client.current() is None
    with inbound({"x-request-id": "outer"}):
        with inbound({"x-request-id": "inner"}):
            assert envoy_client.current().request_id == "inner"
        assert envoy_client.current().request_id == "outer"
    assert envoy_client.current() is None


def test_client_policy_in_inbound_context(tmp_path):
    path = tmp_path / "client.json"
    path.write_text(json.dumps(FULL))
    with Client(config_path=path) as client, inbound({"x-envoy-expected-rq-timeout-ms": "300"},
                                                      received_at=time.monotonic()):
        p = client.policy("bar")
    assert 100 <= p.timeout_ms <= 300


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"timeout": 5}, TypeError, "pass timeout_ms= "),
    ({"headers": {"X-Envoy-Max-Retries": "9"}}, ValueError, "header X-Envoy-Max-Retries is set by envoy_client"),
    ({"headers": {"Host": "other"}}, ValueError, "the Host header is the service name"),
])
def test_call_arguments_that_would_bypass_the_policy_are_refused(kwargs, error, text):
    with Client(egress="127.0.0.1:9") as client, pytest.raises(error, match=re.escape(text)):
        client.get("bar", "/", **kwargs)


@pytest.mark.parametrize(("service", "path"), [("Bar", "/"), ("bar:9001", "/"), ("", "/"), ("bar", "v1/x")])
def test_bad_service_or_path(service, path):
    with Client(egress="127.0.0.1:9") as client, pytest.raises(ValueError):
        client.get(service, path)


# --- the package --------------------------------------------------------------------------------

def test_version_matches_pyproject():
    text = (CLIENT_DIR / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == envoy_client.__version__ == "0.1.0"
    assert re.search(r'^dependencies = \[\s*"requests[^"]*",\s*\]', text, re.M)
    assert (CLIENT_DIR / "envoy_client" / "py.typed").exists()


def test_readme_client_json_example_is_valid():
    """The client.json example in client/README.md is the contract: it must parse."""
    readme = (CLIENT_DIR / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", readme, re.S)
    assert blocks, "client/README.md has no ```json block"
    for block in blocks:
        parse_config(json.loads(block), "client/README.md")


# --- Envoy misbehaving (stand-ins: a socket that closes at once, one that never answers) ---------

@pytest.fixture
def raw_server():
    servers = []

    def start(behaviour):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        held = []

        def serve():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.recv(65536)
                if behaviour == "close":
                    conn.close()
                else:
                    held.append(conn)  # never answers

        threading.Thread(target=serve, daemon=True).start()
        servers.append((sock, held))
        return sock.getsockname()[1]

    yield start
    for sock, held in servers:
        sock.close()
        for conn in held:
            conn.close()


def test_connection_closed_by_envoy_is_egress_connection_error(raw_server):
    port = raw_server("close")
    with Client(egress=f"127.0.0.1:{port}") as client, pytest.raises(EgressConnectionError) as caught:
        client.get("bar", "/", headers={"x-request-id": "rid-closed"})
    message = str(caught.value)
    assert f"the connection to the egress 127.0.0.1:{port} broke before Envoy answered" in message
    assert "rid-closed" in message and "RemoteDisconnected" in message


def test_envoy_not_answering_is_the_clients_own_timeout(raw_server):
    port = raw_server("hang")
    with Client(egress=f"127.0.0.1:{port}", grace_s=0.1) as client, pytest.raises(ClientTimeoutError) as caught:
        client.get("bar", "/", timeout_ms=100)
    assert caught.value.whose == "client"
    assert caught.value.seconds == pytest.approx(0.2)
    assert "did not answer the call to service 'bar' within 0.2 s (the client's own safety timeout" in str(caught.value)


def test_json_helpers_refuse_raise_for_status():
    with Client(egress="127.0.0.1:9") as client, pytest.raises(TypeError, match="always raise"):
        client.get_json("bar", "/", raise_for_status=False)
