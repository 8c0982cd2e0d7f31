"""
``envoy.config`` in static mode (one envoy.yaml) through the real ``salt-call --local`` on a
sandbox host with a real bundle: the config is rendered by the bundle's generator, validated by the
bundle's envoy and written atomically (0640, previous kept); test=True writes nothing; a second run
changes nothing; bad manifests and pillars, and configs Envoy itself rejects, fail the state and
leave the file alone; private keys never reach the state's output or the minion's log. Files mode:
tests/integration/test_config_files_mode.py.
"""

import os
import stat
from pathlib import Path

import pytest

from tests.helpers.configgen_cases import GOLDEN, bad_case, deep_merge, load_yaml
from tests.helpers.sandbox import SandboxHost

STATE = "envoy-config-file-managed"
MANIFEST = """service: foo
ingress: {port: 19211, app_port: 18081}
upstreams:
  - {service: bar, timeout_ms: 250}
"""
NETWORK = {
    "roles": ["sidecar"],
    "listeners": {"egress": {"port": 19001}},
    "services": {"bar": {"hosts": ["127.0.0.1:18082"]}, "users": {"type": "mongo", "hosts": ["127.0.0.1:27017"]},
                 "sessions": {"type": "redis", "hosts": ["127.0.0.1:6379"]}, "rides": {"discovery": "eds"}},
}
# A representative subset of tests/bad (manifests, bounds, references, ports, pillar, secrets).
STATE_BAD_CASES = ["manifest_yaml_does_not_parse", "manifest_unknown_field_typo", "manifest_timeout_above_maximum",
                   "manifest_unknown_upstream", "manifest_port_is_egress_port", "pillar_route_unknown_service",
                   "pillar_private_key_not_pem"]


@pytest.fixture(scope="module")
def host(tmp_path_factory, built_bundle):
    tarball, sha256 = built_bundle
    sandbox = SandboxHost(tmp_path_factory.mktemp("config-host"), minion_id="config-host")
    sandbox.bundle_pillar = {"bundle": {"source": tarball.as_uri(), "sha256": sha256}}
    use_network(sandbox, NETWORK)
    sandbox.sync()
    manifest_dir = Path(sandbox.settings["manifest_dir"])
    manifest_dir.mkdir(parents=True, exist_ok=True)
    (manifest_dir / "foo.yaml").write_text(MANIFEST)
    return sandbox


def use_network(host, network):
    host.set_pillar({"envoy": deep_merge({**host.bundle_pillar, "lookup": {"config_mode": "static"}}, network)})


def apply(host, test=False):
    return host.apply("envoy.config", test=test)[STATE]


def config_path(host):
    return Path(host.settings["config_file"])


def snapshot(host):
    """Bytes and mtime of the config and its .prev, plus the config dir listing."""
    path = config_path(host)
    out = {"dir": sorted(os.listdir(path.parent))}
    for p in (path, Path(str(path) + ".prev")):
        out[p.name] = (p.read_bytes(), p.stat().st_mtime_ns) if p.exists() else None
    return out


def reset_manifests(host, files):
    manifest_dir = Path(host.settings["manifest_dir"])
    for old in manifest_dir.glob("*.yaml"):
        old.unlink()
    for name, text in files.items():
        (manifest_dir / name).write_text(text)


def test_first_apply_writes_a_validated_config(host, envoy_bin, tmp_path):
    result = apply(host)
    assert result["result"] is True, result["comment"]
    path = config_path(host)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "+  - name: \"egress\"" in result["changes"]["diff"]
    assert "previous" not in result["changes"]  # nothing to keep on a first write
    # The bytes on disk are what the module renders for this host, and the real envoy takes them.
    _, rendered = host.salt_call("envoy.render", "redact=False", "--out=json")
    assert path.read_text() == rendered
    _, verdict = host.salt_call("envoy.validate", f"path={path}")
    assert verdict == {"ok": True, "error": ""}
    _, verdict = host.salt_call("envoy.validate")  # renders afresh, validates in a temp dir
    assert verdict == {"ok": True, "error": ""}


def test_second_apply_changes_nothing(host):
    apply(host)
    before = snapshot(host)
    result = apply(host)
    assert result["result"] is True and result["changes"] == {}, result
    assert "up to date" in result["comment"]
    assert snapshot(host) == before


def test_unchanged_inputs_skip_rendering_and_any_drift_renders_again(host):
    apply(host)
    assert "its inputs are unchanged" in apply(host)["comment"]
    path = config_path(host)
    good = path.read_text()
    # A hand edit of the live config: rendered again and put back.
    path.write_text(good + "# hand edit\n")
    result = apply(host)
    assert result["result"] is True and "+# hand edit" not in result["changes"]["diff"], result
    assert "-# hand edit" in result["changes"]["diff"] and path.read_text() == good
    # Mode drift alone: fixed without a rewrite.
    os.chmod(path, 0o644)
    result = apply(host)
    assert result["changes"] == {"mode": "fixed"}, result
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # A manifest edit changes the inputs: rendered, and the new config written.
    reset_manifests(host, {"foo.yaml": MANIFEST.replace("timeout_ms: 250", "timeout_ms: 300")})
    try:
        result = apply(host)
        assert "+                  timeout: 0.300s" in result["changes"]["diff"], result
    finally:
        reset_manifests(host, {"foo.yaml": MANIFEST})
        assert apply(host)["result"] is True
    assert path.read_text() == good
    assert "its inputs are unchanged" in apply(host)["comment"]


def test_test_mode_shows_the_diff_and_writes_nothing(host):
    apply(host)
    before = snapshot(host)
    reset_manifests(host, {"foo.yaml": MANIFEST + "  - {service: bar2}\n"})
    use_network(host, deep_merge(NETWORK, {"services": {"bar2": {"hosts": ["127.0.0.1:18083"]}}}))
    try:
        result = apply(host, test=True)
        assert result["result"] is None, result["comment"]
        assert '+            - name: "bar2"' in result["changes"]["diff"]
        assert snapshot(host) == before
    finally:
        reset_manifests(host, {"foo.yaml": MANIFEST})
        use_network(host, NETWORK)


def test_a_change_is_written_and_the_previous_config_kept(host):
    apply(host)
    old = config_path(host).read_text()
    reset_manifests(host, {"foo.yaml": MANIFEST.replace("timeout_ms: 250", "timeout_ms: 400")})
    try:
        result = apply(host)
        assert result["result"] is True, result["comment"]
        assert "-                  timeout: 0.250s" in result["changes"]["diff"]
        assert "+                  timeout: 0.400s" in result["changes"]["diff"]
        assert Path(str(config_path(host)) + ".prev").read_text() == old
        assert "timeout: 0.400s" in config_path(host).read_text()
        assert stat.S_IMODE(config_path(host).stat().st_mode) == 0o640
        assert not [n for n in os.listdir(config_path(host).parent) if n.endswith(".tmp")]
    finally:
        reset_manifests(host, {"foo.yaml": MANIFEST})
        assert apply(host)["result"] is True


@pytest.mark.parametrize("case", STATE_BAD_CASES)
def test_bad_input_fails_the_state_and_leaves_the_config(host, case, tmp_path):
    apply(host)
    before = snapshot(host)
    manifest_dir = Path(host.settings["manifest_dir"])
    staging = tmp_path / "manifest.d"
    pillar, _, expect, absent = bad_case(case, staging)
    # Messages name the host's manifest dir, where the files really are.
    expect = [line.replace(str(staging), str(manifest_dir)) for line in expect]
    reset_manifests(host, {p.name: p.read_text() for p in staging.glob("*.yaml")})
    use_network(host, pillar)
    try:
        result = apply(host)
        assert result["result"] is False
        assert result["changes"] == {}
        for wanted in expect:
            assert wanted in result["comment"], result["comment"]
        for secret in absent:
            assert secret not in str(result)
        assert snapshot(host) == before
    finally:
        reset_manifests(host, {"foo.yaml": MANIFEST})
        use_network(host, NETWORK)


def test_config_envoy_rejects_fails_the_state_with_envoys_error(host):
    """A lookahead is a fine Python regex but not RE2: the generator lets it through, the bundle's
    envoy refuses it, and nothing is written."""
    apply(host)
    before = snapshot(host)
    use_network(host, deep_merge(NETWORK, {
        "roles": ["sidecar", "front"], "listeners": {"front": {"http_port": 18080}},
        "routes": [{"name": "api", "match": {"regex": "^/(?=api)"}, "service": "bar"}]}))
    try:
        for test in (True, False):
            result = apply(host, test=test)
            assert result["result"] is False, result
            assert "envoy rejects the rendered config" in result["comment"]
            assert "invalid perl operator: (?=" in result["comment"]  # envoy's own words
            assert snapshot(host) == before
    finally:
        use_network(host, NETWORK)


def test_private_keys_never_reach_state_output_or_logs(host):
    front = load_yaml(GOLDEN / "front" / "pillar.yaml")
    keys = [cert["private_key"] for cert in front["tls"]["certificates"]]
    key_body = [line for line in keys[0].splitlines() if "PRIVATE KEY" not in line][0]
    network = deep_merge(NETWORK, {"roles": ["sidecar", "front"], "tls": front["tls"],
                                   "listeners": {"front": {"http_port": 18080, "https_port": 18443}},
                                   "routes": [{"name": "all", "match": {"prefix": "/"}, "service": "bar"}]})
    use_network(host, network)
    try:
        for test in (True, False):
            result = apply(host, test=test)
            assert result["result"] is not False, result["comment"]
            assert key_body not in str(result)
            assert "<redacted private key sha256:" in result["changes"]["diff"]
        assert key_body.replace("\n", "") in config_path(host).read_text()  # the key is in the config
        _, rendered = host.salt_call("envoy.render", "--out=json")
        assert key_body not in rendered and "<redacted private key" in rendered
        logs = [p for p in (host.base / "salt-root").rglob("minion") if p.is_file()]
        assert logs, "the sandbox minion writes a debug log"
        assert all(key_body not in p.read_text(errors="replace") for p in logs)
    finally:
        use_network(host, NETWORK)
        assert apply(host)["result"] is True


def test_validation_runs_as_the_envoy_user_when_root(tmp_path, envoy_bin):
    """As root, validation runs envoy as the configured user (here `nobody`): a log dir that user
    cannot write fails validation, as it would fail the real Envoy. The bundle is unpacked where
    that user can reach it (as under /opt/envoy); a binary it cannot reach is named in the error."""
    import pwd
    import shutil
    import tempfile

    from envoy_formula import config_validate
    from envoy_formula.errors import EnvoyFormulaError

    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user")
    world = Path(tempfile.mkdtemp(prefix="envoy-validate-user-"))  # traversable by nobody
    try:
        world.chmod(0o755)
        (world / "current" / "bin").mkdir(parents=True)
        shutil.copy2(envoy_bin, world / "current" / "bin" / "envoy")  # a copy: the checkout may be private
        root_only = world / "root-only-logs"
        root_only.mkdir(mode=0o755)
        config = (GOLDEN / "sidecar" / "envoy.yaml").read_text()
        host = {"current_dir": str(world / "current"), "user": "nobody", "group": "nogroup"}
        cases = {"writable": str(world / "logs-for-nobody"), "root_only": str(root_only)}
        Path(cases["writable"]).mkdir()
        os.chown(cases["writable"], pwd.getpwnam("nobody").pw_uid, -1)
        verdicts = {}
        for name, log_dir in cases.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(config.replace('"/var/log/envoy/', f'"{log_dir}/'))
            verdicts[name] = config_validate.validate_file(host, str(path))
        assert verdicts["writable"] == {"ok": True, "error": ""}
        assert not verdicts["root_only"]["ok"]
        assert "Permission denied" in verdicts["root_only"]["error"]

        (world / "current" / "bin").chmod(0o700)  # nobody can no longer reach the binary
        with pytest.raises(EnvoyFormulaError, match="as user nobody: cannot execute .*searchable by nobody"):
            config_validate.validate_file(host, str(tmp_path / "writable.yaml"))
    finally:
        shutil.rmtree(world, ignore_errors=True)


def test_without_a_bundle_test_mode_predicts_and_a_real_run_fails_clearly(tmp_path):
    bare = SandboxHost(tmp_path / "bare", minion_id="bare-host")
    bare.set_pillar({"envoy": NETWORK})
    bare.sync()
    manifest_dir = Path(bare.settings["manifest_dir"])
    manifest_dir.mkdir(parents=True)
    (manifest_dir / "foo.yaml").write_text(MANIFEST)
    predicted = bare.apply("envoy.config", test=True)[STATE]
    assert predicted["result"] is None and "once the Envoy bundle is installed" in predicted["comment"]
    result = bare.apply("envoy.config")[STATE]
    assert result["result"] is False
    assert "no Envoy bundle is installed" in result["comment"]
    assert not config_path(bare).exists()
