"""Config generator pieces: the CLI contract, the documented pillar.example, filters, the
listeners other features rely on (health check filter, loopback admin), and key redaction."""

import importlib.util
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


def load_salt_module():
    spec = importlib.util.spec_from_file_location("envoy_salt_module", REPO / "_modules" / "envoy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_redaction_hides_raw_and_escaped_keys_but_shows_a_change():
    redact = load_salt_module()._cfg_redact
    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAsecretbody\n-----END PRIVATE KEY-----\n"
    other = key.replace("secretbody", "otherbody")
    for text in (f"private_key: |\n{key}", f"inline_string: {json.dumps(key)}",
                 "x: " + key.replace("PRIVATE KEY", "EC PRIVATE KEY")):
        out = redact(text)
        assert "secretbody" not in out and "<redacted private key sha256:" in out
    assert redact(key) != redact(other)  # a diff still shows that the key changed
    assert redact("certificate_chain: -----BEGIN CERTIFICATE-----") == "certificate_chain: -----BEGIN CERTIFICATE-----"
