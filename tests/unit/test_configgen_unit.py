"""Config generator pieces: the CLI contract, the documented pillar.example, filters, the
listeners other features rely on (health check filter, loopback admin), and key redaction."""

import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from envoy_bundle.configgen import ConfigError, generate
from envoy_bundle.configgen.cli import main as configgen_main
from envoy_bundle.configgen.render import duration, quote

from tests.helpers.configgen_cases import GOLDEN, envoy_validate, golden_inputs, load_yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "service: foo\ningress: {port: 9211, app_port: 18081}\nupstreams:\n  - {service: users-api}\n"
HOST = {"node_id": "unit", "admin_port": 9901, "log_dir": "/var/log/envoy"}


def listeners(text):
    return {item["name"]: item for item in yaml.safe_load(text)["static_resources"]["listeners"]}


def http_filters(listener, chain=0):
    hcm = listener["filter_chains"][chain]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


def test_pillar_example_renders_and_envoy_accepts_it(envoy_bin, tmp_path):
    pillar = load_yaml(REPO / "pillar.example")["envoy"]
    pillar["roles"] = ["sidecar", "front"]
    text = generate([("/etc/envoy/manifest.d/foo.yaml", MANIFEST)], pillar, HOST)
    ok, output = envoy_validate(envoy_bin, text, tmp_path, log_dir=HOST["log_dir"])
    assert ok, output


def test_health_check_filter_on_ingress_and_front_but_not_egress():
    found = listeners((GOLDEN / "both" / "envoy.yaml").read_text())
    for name in ("ingress_foo", "ingress_bar", "front_http"):
        assert http_filters(found[name])[0] == "envoy.filters.http.health_check", name
    assert "envoy.filters.http.health_check" not in http_filters(found["egress"])
    egress = found["egress"]["address"]["socket_address"]
    assert egress == {"address": "127.0.0.1", "port_value": 9001}


def test_front_https_has_a_health_check_on_every_certificate_chain():
    front = listeners((GOLDEN / "front" / "envoy.yaml").read_text())["front_https"]
    assert len(front["filter_chains"]) == 2
    for index in range(2):
        assert http_filters(front, index)[0] == "envoy.filters.http.health_check"


def test_egress_has_one_virtual_host_per_upstream_named_by_host_header():
    egress = listeners((GOLDEN / "sidecar" / "envoy.yaml").read_text())["egress"]
    vhosts = egress["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
    assert [(v["name"], v["domains"]) for v in vhosts] == [("bar", ["bar", "bar:9001"]), ("baz", ["baz", "baz:9001"]),
                                                         ("pricing", ["pricing", "pricing:9001"])]


def test_manifest_knobs_override_pillar_defaults():
    config = yaml.safe_load((GOLDEN / "sidecar" / "envoy.yaml").read_text())
    bar = next(c for c in config["static_resources"]["clusters"] if c["name"] == "bar")
    assert bar["circuit_breakers"]["thresholds"][0]["max_requests"] == 200  # manifest
    assert bar["circuit_breakers"]["thresholds"][0]["max_connections"] == 1024  # default


def test_admin_address_is_only_loopback():
    manifests, pillar, host = golden_inputs("sidecar")
    with pytest.raises(ConfigError) as caught:
        generate(manifests, pillar, {**host, "admin_address": "0.0.0.0"})
    assert caught.value.messages == ["host facts: admin_address=0.0.0.0 must be one of 127.0.0.1"]


def test_formula_keys_of_the_pillar_are_ignored():
    manifests, pillar, host = golden_inputs("sidecar")
    extra = {"lookup": {"root": "/x"}, "bundle": {"source": "salt://b.tgz"}, "schedule": {"minutes": 5},
             "restart": {"drain_time_s": 60}}
    assert generate(manifests, {**pillar, **extra}, host) == generate(manifests, pillar, host)


def test_empty_sections_mean_defaults():
    """`routes:` with nothing after it (None in YAML) is the same as leaving the key out."""
    manifests, pillar, host = golden_inputs("sidecar")
    empty = {**pillar, "routes": None, "tls": None, "defaults": None, "overridable": None}
    assert generate(manifests, empty, host) == generate(manifests, pillar, host)
    manifest = manifests[0][1] + "databases:\n"
    assert generate([(manifests[0][0], manifest)], pillar, host) == generate(manifests, pillar, host)


def test_cli_writes_yaml_to_stdout_from_stdin_facts(tmp_path, monkeypatch, capsys):
    manifests, pillar, host = golden_inputs("sidecar")
    (tmp_path / "foo.yaml").write_text(manifests[0][1])
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"pillar": pillar, "host": host})))
    assert configgen_main(["--manifest-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (GOLDEN / "sidecar" / "envoy.yaml").read_text()


@pytest.mark.parametrize("facts, message", [
    ("{not json", "cannot read JSON"),
    ('{"pillar": {}, "hosts": {}}', "must be a JSON object with the keys pillar and host"),
])
def test_cli_refuses_bad_facts_with_exit_2(tmp_path, facts, message, capsys):
    (tmp_path / "facts.json").write_text(facts)
    assert configgen_main(["--manifest-dir", str(tmp_path), "--facts", str(tmp_path / "facts.json")]) == 2
    assert message in capsys.readouterr().err


def test_cli_prints_one_message_per_line(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("service: a\nupstreams: [{service: x}, {service: y}]\n")
    (tmp_path / "facts.json").write_text(json.dumps({"pillar": {}, "host": HOST}))
    assert configgen_main(["--manifest-dir", str(tmp_path), "--facts", str(tmp_path / "facts.json")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"manifest {tmp_path}/a.yaml: upstreams[") for line in lines)


def test_an_unreadable_manifest_is_reported_not_a_crash(tmp_path, capsys):
    (tmp_path / "broken.yaml").symlink_to(tmp_path / "missing-target")
    (tmp_path / "facts.json").write_text(json.dumps({"pillar": {}, "host": HOST}))
    assert configgen_main(["--manifest-dir", str(tmp_path), "--facts", str(tmp_path / "facts.json")]) == 2
    assert f"manifest {tmp_path}/broken.yaml: cannot be read: No such file or directory" in capsys.readouterr().err


def test_hidden_and_non_yaml_files_in_the_manifest_dir_are_skipped(tmp_path, capsys):
    (tmp_path / ".foo.yaml.swp").write_text("garbage: [")
    (tmp_path / "README").write_text("not a manifest")
    (tmp_path / "facts.json").write_text(json.dumps({"pillar": {}, "host": HOST}))
    assert configgen_main(["--manifest-dir", str(tmp_path), "--facts", str(tmp_path / "facts.json")]) == 0


@pytest.mark.parametrize("ms, text", [(0, "0.000s"), (250, "0.250s"), (15000, "15.000s"), (1001, "1.001s")])
def test_durations_are_exact(ms, text):
    assert duration(ms) == text


def test_quoting_keeps_any_string_intact():
    tricky = 'a "quoted" #not-a-comment: {x}\n\tand unicode é'
    assert yaml.safe_load(f"v: {quote(tricky)}")["v"] == tricky


def test_redaction_hides_raw_and_escaped_keys_but_shows_a_change():
    from envoy_formula.redaction import hide_private_keys as redact

    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAsecretbody\n-----END PRIVATE KEY-----\n"
    other = key.replace("secretbody", "otherbody")
    for text in (f"private_key: |\n{key}", f"inline_string: {json.dumps(key)}",
                 "x: " + key.replace("PRIVATE KEY", "EC PRIVATE KEY")):
        out = redact(text)
        assert "secretbody" not in out and "<redacted private key sha256:" in out
    assert redact(key) != redact(other)  # a diff still shows that the key changed
    assert redact("certificate_chain: -----BEGIN CERTIFICATE-----") == "certificate_chain: -----BEGIN CERTIFICATE-----"


# --- issue 15: edge ports and redirects, gRPC health checks, streams, route order ---------------

CERT = load_yaml(GOLDEN / "front" / "pillar.yaml")["tls"]["certificates"][1]


def _front_routes(pillar_extra, listener="front_http"):
    pillar = {"roles": ["front"], "services": {"app": {"hosts": ["10.0.0.1:80"]}},
              "tls": {"certificates": [CERT]}, **pillar_extra}
    found = listeners(generate([], pillar, HOST))[listener]
    route_config = found["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    return route_config, {r["name"]: r for vhost in route_config["virtual_hosts"] for r in vhost["routes"]}


@pytest.mark.parametrize("http_port, https_port, expected", [(80, 443, None), (8080, 8443, 8443),
                                                             (8080, 443, 443), (80, 8443, 8443)])
def test_https_redirect_names_the_https_port_unless_the_ports_are_standard(http_port, https_port, expected):
    routes = [{"name": "login", "match": {"path": "/login"}, "service": "app", "https_only": True},
              {"name": "secure", "match": {"prefix": "/account"}, "redirect": {"https": True, "prefix": "/my"}},
              {"name": "old", "match": {"path": "/old"}, "redirect": {"path": "/new"}}]
    front = {"front": {"http_port": http_port, "https_port": https_port}}
    route_config, found = _front_routes({"listeners": front, "routes": routes})
    assert route_config["ignore_port_in_host_matching"] is True
    assert found["login"]["redirect"].get("port_redirect") == expected
    assert found["secure"]["redirect"].get("port_redirect") == expected
    assert "port_redirect" not in found["old"]["redirect"]  # same scheme: the client's own port stays
    _, found = _front_routes({"listeners": front, "routes": routes}, listener="front_https")
    assert "route" in found["login"] and found["secure"]["redirect"].get("port_redirect") == expected


def test_sensible_route_orders_are_not_refused_as_shadowed():
    routes = [
        {"name": "v2", "match": {"prefix": "/api/v2/"}, "service": "app"},
        {"name": "api", "match": {"prefix": "/api/"}, "service": "app"},  # after the longer prefix: fine
        {"name": "canary", "match": {"prefix": "/", "headers": [{"name": "x-canary", "present": True}]},
         "service": "app"},
        {"name": "login", "match": {"path": "/login"}, "service": "app"},  # canary needs a header login does not
        {"name": "log", "match": {"prefix": "/log/"}, "service": "app"},  # /login does not cover it
        {"name": "versioned", "match": {"regex": "^/v[0-9]+/"}, "service": "app"},
        {"name": "after-regex", "match": {"prefix": "/v1/"}, "service": "app"},  # regexes are not judged
        {"name": "other-domain", "domains": ["other.example.test"], "match": {"prefix": "/"}, "service": "app"},
        {"name": "root", "match": {"prefix": "/"}, "service": "app"},
        {"name": "other-login", "domains": ["other.example.test"], "match": {"path": "/x"}, "service": "app"},
    ]
    with pytest.raises(ConfigError) as caught:
        _front_routes({"routes": routes})
    # Only the route after other-domain's `prefix: /` in the same domain list is refused.
    assert caught.value.messages == [
        "pillar envoy:routes[9]:match of route other-login can never match: envoy:routes[7] (other-domain) comes "
        "first for the same domains and its prefix / matches every path, path /x included; list the more "
        "specific route first"]
    _front_routes({"routes": routes[:-1]})


@pytest.mark.parametrize("entry, expected", [
    ({"type": "http2"}, {"grpc_health_check": {}}),
    ({"type": "http2", "health_check_grpc_service": "a.v1.A"}, {"grpc_health_check": {"service_name": "a.v1.A"}}),
    ({"type": "http2", "health_check_protocol": "http"},
     {"http_health_check": {"path": "/healthcheck", "codec_client_type": "HTTP2"}}),
    ({"type": "http", "health_check_path": "/status"}, {"http_health_check": {"path": "/status"}}),
])
def test_catalogue_chooses_how_a_service_is_health_checked(entry, expected):
    pillar = {"services": {"users-api": {"hosts": ["10.0.0.1:80"], **entry}}}
    config = yaml.safe_load(generate([("/etc/envoy/manifest.d/foo.yaml", MANIFEST)], pillar, HOST))
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "users-api")
    check = cluster["health_checks"][0]
    assert {k: v for k, v in check.items() if k.endswith("_health_check")} == expected


def test_stream_knobs_replace_the_route_timeout_on_egress_and_ingress():
    manifest = ("service: foo\n"
                "ingress: {port: 9211, app_port: 18081, max_stream_duration_ms: 600000, stream_idle_timeout_ms: 30000}\n"
                "upstreams:\n  - {service: users-api, max_stream_duration_ms: 120000}\n  - {service: legacy}\n")
    pillar = {"services": {"users-api": {"type": "http2", "hosts": ["10.0.0.1:80"]}, "legacy": {"hosts": ["10.0.0.2:80"]}},
              "defaults": {"upstreams": {"per_try_timeout_ms": 500}}}
    found = listeners(generate([("/etc/envoy/manifest.d/foo.yaml", manifest)], pillar, HOST))

    def route(listener, vhost):
        config = found[listener]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        return next(v for v in config["virtual_hosts"] if v["name"] == vhost)["routes"][0]["route"]

    stream = route("egress", "users-api")
    assert stream["timeout"] == "0.000s" and "per_try_timeout" not in stream.get("retry_policy", {})
    assert stream["max_stream_duration"] == {"max_stream_duration": "120.000s", "grpc_timeout_header_max": "120.000s"}
    assert "idle_timeout" not in stream  # the connection manager's stream_idle_timeout (300 s) applies
    unary = route("egress", "legacy")  # unchanged: the default route timeout and per-try timeout
    assert unary["timeout"] == "15.000s" and unary["retry_policy"]["per_try_timeout"] == "0.500s"
    assert "max_stream_duration" not in unary and "idle_timeout" not in unary
    ingress = route("ingress_foo", "local_foo")
    assert (ingress["timeout"], ingress["idle_timeout"]) == ("0.000s", "30.000s")
    assert ingress["max_stream_duration"]["max_stream_duration"] == "600.000s"


def test_compiled_templates_are_kept_in_the_cache_dir_and_a_bad_entry_only_recompiles(tmp_path):
    """ENVOY_CONFIGGEN_CACHE_DIR (the formula sets it): the first render stores the compiled
    templates, later renders load them and give the same bytes; an entry that is not Jinja's
    own (truncated, another version) is compiled again, never trusted."""
    import os
    import subprocess

    manifests, pillar, host = golden_inputs("sidecar")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "foo.yaml").write_text(manifests[0][1])
    cache = tmp_path / "run" / "configgen-cache"
    launcher = Path(__file__).resolve().parents[2] / "bundle" / "bin" / "envoy-configgen"

    def render():
        proc = subprocess.run([sys.executable, str(launcher), "--manifest-dir", str(tmp_path / "manifests")],
                              input=json.dumps({"pillar": pillar, "host": host}), capture_output=True, text=True,
                              env={**os.environ, "ENVOY_CONFIGGEN_CACHE_DIR": str(cache)}, check=True)
        return proc.stdout

    golden = (GOLDEN / "sidecar" / "envoy.yaml").read_text()
    assert render() == golden
    entries = sorted(cache.iterdir())
    assert entries and all(e.name.startswith("__jinja2_") for e in entries), entries
    assert cache.stat().st_mode & 0o777 == 0o700
    stamps = {e: e.stat().st_mtime_ns for e in entries}
    assert render() == golden
    assert {e: e.stat().st_mtime_ns for e in entries} == stamps, "a warm cache is read, not rewritten"
    for entry in entries:
        entry.write_bytes(b"not jinja bytecode")
    assert render() == golden
    assert all(e.read_bytes() != b"not jinja bytecode" for e in entries), "bad entries are replaced"


def test_mesh_tls_off_as_bare_yaml_renders_exactly_like_no_mesh_tls():
    manifests, pillar, host = golden_inputs("sidecar")
    bare_off = {**pillar, **yaml.safe_load("mesh_tls: {mode: off}")}
    assert bare_off["mesh_tls"]["mode"] is False  # YAML 1.1: a bare off is false
    assert generate(manifests, bare_off, host) == generate(manifests, pillar, host)


def test_pillar_example_with_mesh_tls_strict_is_accepted_by_envoy(envoy_bin, tmp_path):
    pillar = load_yaml(REPO / "pillar.example")["envoy"]
    pillar["roles"] = ["sidecar", "front"]
    pillar["mesh_tls"]["mode"] = "strict"
    host = {**HOST, "pki_dir": "/etc/envoy/pki"}
    text = generate([("/etc/envoy/manifest.d/foo.yaml", MANIFEST)], pillar, host)
    assert "spiffe://mesh.example.com/service/users-api" in text  # foo checks who answers
    ok, output = envoy_validate(envoy_bin, text, tmp_path, log_dir=HOST["log_dir"], pki_dir=host["pki_dir"])
    assert ok, output
