"""
The state module's own logic (``_states/envoy.py``) under Salt's loader mocks: what each state
returns for each answer of the execution module and the library (changes filled before the test
check, ``result: None`` under test, ``False`` with a readable comment on errors, nothing secret in
the output). The same states run for real in tests/integration.
"""

import os
from unittest.mock import MagicMock

import pytest
from envoy_formula import config_render, config_validate
from salt.exceptions import CommandExecutionError

from tests.helpers import front_ends

envoy_state = front_ends.load("states")
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEsecret\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def salt_mods():
    return {}


@pytest.fixture
def opts():
    return {"test": False, "id": "web1"}


@pytest.fixture
def configure_loader_modules(salt_mods, opts):
    return {envoy_state: {"__salt__": salt_mods, "__opts__": opts, "__utils__": front_ends.utils(),
                          "__pillar__": {"envoy": {"roles": ["sidecar"]}}, "__grains__": {"id": "web1"}}}


A = {"bundle_id": "1.40.0-aaaaaaaaaaaa", "envoy_version": "1.40.0"}
B = {"bundle_id": "1.40.0-bbbbbbbbbbbb", "envoy_version": "1.40.0"}


# --- bundle_installed ---------------------------------------------------------------------------

def test_bundle_already_current_changes_nothing(salt_mods):
    salt_mods["envoy.bundle_plan"] = MagicMock(return_value={"action": "none", "old": A, "release": A})
    salt_mods["envoy.install_bundle"] = MagicMock()
    ret = envoy_state.bundle_installed("https://repo/b.tar.gz", sha256="a" * 64)
    assert ret["result"] is True and ret["changes"] == {} and "already current" in ret["comment"]
    salt_mods["envoy.install_bundle"].assert_not_called()


def test_bundle_test_mode_predicts_a_download_without_credentials(salt_mods, opts):
    opts["test"] = True
    salt_mods["envoy.bundle_plan"] = MagicMock(return_value={"action": "download", "sha256": "b" * 64, "old": A,
                                                             "release": None})
    salt_mods["envoy.install_bundle"] = MagicMock()
    ret = envoy_state.bundle_installed("https://user:pw@repo/b.tar.gz?token=t", sha256="b" * 64)
    assert ret["result"] is None
    assert ret["changes"] == {"old": A, "new": f"bundle with sha256 {'b' * 64}"}
    assert "would download" in ret["comment"] and "pw" not in ret["comment"] and "token" not in ret["comment"]
    salt_mods["envoy.install_bundle"].assert_not_called()


def test_bundle_switch_then_failed_install_leaves_no_changes(salt_mods):
    salt_mods["envoy.bundle_plan"] = MagicMock(return_value={"action": "switch", "sha256": "b" * 64, "old": A,
                                                             "release": B})
    salt_mods["envoy.install_bundle"] = MagicMock(side_effect=CommandExecutionError("sha256 mismatch"))
    ret = envoy_state.bundle_installed("salt://b.tar.gz", sha256="b" * 64)
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == "bundle not installed, current left as it was: sha256 mismatch"


def test_bundle_plan_error_is_a_failed_state(salt_mods):
    salt_mods["envoy.bundle_plan"] = MagicMock(side_effect=CommandExecutionError("a sha256 is required"))
    ret = envoy_state.bundle_installed("salt://b.tar.gz")
    assert (ret["result"], ret["changes"], ret["comment"]) == (False, {}, "a sha256 is required")


# --- config_managed ------------------------------------------------------------------------------

@pytest.fixture
def config_host(tmp_path, salt_mods, monkeypatch):
    """A static-mode host whose bundle 'exists' and whose generator and validator are stand-ins."""
    current = tmp_path / "opt" / "current"
    (current / "bin").mkdir(parents=True)
    (current / "bin" / "envoy-configgen").write_text("")
    host = {"current_dir": str(current), "manifest_dir": str(tmp_path / "manifests"), "admin_port": 9901,
            "log_dir": str(tmp_path / "log"), "group": "root", "user": "root", "config_dir": str(tmp_path),
            "config_file": str(tmp_path / "envoy.yaml"), "config_mode": "static", "run_dir": str(tmp_path / "run")}
    salt_mods["envoy.settings"] = MagicMock(return_value=host)
    rendered = {"text": "static_resources: {}\n"}

    def outputs(h, pillar, node, mode):
        return {"mode": "static", "files": {"envoy.yaml": rendered["text"]}, "effective": rendered["text"]}

    monkeypatch.setattr(config_render, "render_outputs", outputs)
    verdicts = {"ok": True, "error": ""}
    monkeypatch.setattr(config_validate, "validate_text", lambda h, text: dict(verdicts))
    return {"path": tmp_path / "envoy.yaml", "rendered": rendered, "verdict": verdicts,
            "manifests": tmp_path / "manifests"}


def test_config_written_then_up_to_date_by_its_inputs(config_host):
    path = config_host["path"]
    ret = envoy_state.config_managed(str(path))
    assert ret["result"] is True and ret["comment"].startswith(f"{path} changed (Envoy starts with it)")
    assert ret["changes"]["diff"].startswith("--- /dev/null") and ret["changes"]["files"] == {"envoy.yaml": "added"}
    assert path.read_text() == "static_resources: {}\n" and os.stat(path).st_mode & 0o777 == 0o640
    again = envoy_state.config_managed(str(path))
    assert again == {"name": str(path), "result": True, "changes": {},
                     "comment": f"{path} is up to date (its inputs are unchanged)"}


def test_config_diff_hides_private_keys_and_keeps_the_previous_file(config_host):
    path = config_host["path"]
    envoy_state.config_managed(str(path))
    config_host["rendered"]["text"] = f"key: |\n{KEY}"
    config_host["manifests"].mkdir()
    (config_host["manifests"] / "foo.yaml").write_text("service: foo\n")  # new inputs: a real render
    ret = envoy_state.config_managed(str(path))
    assert "MIIEsecret" not in str(ret) and "<redacted private key sha256:" in ret["changes"]["diff"]
    assert (path.parent / "envoy.yaml.prev").read_text() == "static_resources: {}\n"


def test_config_test_mode_validates_and_writes_nothing(config_host, opts):
    opts["test"] = True
    ret = envoy_state.config_managed(str(config_host["path"]))
    assert ret["result"] is None and "diff" in ret["changes"] and "would change" in ret["comment"]
    assert not config_host["path"].exists()


def test_config_envoy_rejects_it_the_file_stays(config_host):
    path = config_host["path"]
    path.write_text("old: config\n")
    config_host["verdict"].update(ok=False, error=f"invalid cluster {KEY}")
    ret = envoy_state.config_managed(str(path))
    assert ret["result"] is False and ret["changes"] == {}
    assert "not changed: envoy rejects the rendered config" in ret["comment"]
    assert "MIIEsecret" not in ret["comment"] and "<redacted private key sha256:" in ret["comment"]
    assert path.read_text() == "old: config\n" and not (path.parent / "envoy.yaml.prev").exists()


def test_config_mode_drift_alone_is_fixed(config_host):
    path = config_host["path"]
    envoy_state.config_managed(str(path))
    (path.parent / ".envoy.yaml.inputs.json").unlink()
    path.chmod(0o644)
    ret = envoy_state.config_managed(str(path))
    assert ret["changes"] == {"mode": "fixed"} and os.stat(path).st_mode & 0o777 == 0o640


def test_config_bad_input_fails_naming_the_file_and_writes_nothing(config_host, monkeypatch, opts):
    from envoy_formula.errors import EnvoyFormulaError

    def bad(*_):
        raise EnvoyFormulaError("bad manifest or pillar:\nmanifest /m/foo.yaml: ingress.port is required")

    monkeypatch.setattr(config_render, "render_outputs", bad)
    ret = envoy_state.config_managed(str(config_host["path"]))
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].endswith("not changed: bad manifest or pillar:\nmanifest /m/foo.yaml: ingress.port is required")
    opts["test"] = True  # under test it says what would happen, not what did
    ret = envoy_state.config_managed(str(config_host["path"]))
    assert " would not be changed: bad manifest or pillar:" in ret["comment"]
    assert not config_host["path"].exists()


def test_config_first_test_run_without_a_bundle_predicts(tmp_path, salt_mods, opts):
    opts["test"] = True
    salt_mods["envoy.settings"] = MagicMock(return_value={"current_dir": str(tmp_path / "none"),
                                                          "config_file": str(tmp_path / "envoy.yaml")})
    ret = envoy_state.config_managed(str(tmp_path / "envoy.yaml"))
    assert ret["result"] is None and "once the Envoy bundle is installed" in ret["comment"]


# --- running, mod_watch, dead ----------------------------------------------------------------------

RUNNING = {"running": True, "epoch": 2, "restarter_pid": 10, "supervisor": "daemon", "state": "LIVE"}
STOPPED = {"running": False, "epoch": None, "restarter_pid": None, "supervisor": "daemon", "state": "stopped"}


def test_running_when_it_runs_changes_nothing(salt_mods, monkeypatch):
    from envoy_formula import lifecycle

    salt_mods["envoy.status"] = MagicMock(return_value=RUNNING)
    salt_mods["envoy.settings"] = MagicMock(return_value={})
    monkeypatch.setattr(lifecycle, "settle", lambda host: None)
    ret = envoy_state.running("envoy")
    assert ret["result"] is True and ret["changes"] == {} and "epoch 2, LIVE" in ret["comment"]


def test_running_reports_a_queued_restart_and_settles_one_that_failed(salt_mods, monkeypatch):
    from envoy_formula import lifecycle

    salt_mods["envoy.status"] = MagicMock(return_value={**RUNNING, "restart_queued": "hot restart queued: ..."})
    salt_mods["envoy.settings"] = MagicMock(return_value={})
    monkeypatch.setattr(lifecycle, "settle", lambda host: None)
    assert envoy_state.running("envoy")["comment"].endswith("; hot restart queued: ...")
    monkeypatch.setattr(lifecycle, "settle", lambda host: {"error": "epoch 3 exited with code 1", "rolled_back": True})
    ret = envoy_state.running("envoy")
    assert ret["result"] is False and ret["changes"]["outcome"] == "failed"
    assert ret["comment"].startswith("the queued hot restart failed: epoch 3 exited with code 1; the previous config")


def test_running_test_mode_predicts_the_start_and_the_orphans(salt_mods, opts):
    opts["test"] = True
    salt_mods.update({"envoy.status": MagicMock(return_value=STOPPED), "envoy.orphans": MagicMock(return_value=[77]),
                      "envoy.start": MagicMock()})
    ret = envoy_state.running("envoy")
    assert ret["result"] is None and ret["changes"] == {"started": True, "supervisor": "daemon", "orphans_stopped": [77]}
    assert "after stopping orphaned envoy pids [77]" in ret["comment"]
    salt_mods["envoy.start"].assert_not_called()


def test_running_start_that_never_gets_live_fails(salt_mods):
    salt_mods.update({"envoy.status": MagicMock(return_value=STOPPED), "envoy.orphans": MagicMock(return_value=[]),
                      "envoy.start": MagicMock(return_value={"started": True, "result": False, "restarter_pid": 5,
                                                             "epoch": None, "error": "exited with code 1"})})
    ret = envoy_state.running("envoy")
    assert ret["result"] is False and "envoy is not LIVE: exited with code 1" in ret["comment"]


def test_mod_watch_test_mode_says_which_restart(salt_mods, opts):
    opts["test"] = True
    salt_mods["envoy.restart_kind"] = MagicMock(return_value={"kind": "full", "reason": "hot restart version 12.0 ..."})
    ret = envoy_state.mod_watch("envoy", sfun="running")
    assert ret["result"] is None and ret["changes"] == {"restart": "full"}
    assert ret["comment"] == "envoy would get a drained full restart: hot restart version 12.0 ..."


def test_mod_watch_failed_hot_restart_rolls_back_and_says_the_old_epoch_serves(salt_mods):
    salt_mods["envoy.reload"] = MagicMock(return_value={"kind": "hot", "result": False, "epoch": 3,
                                                        "error": "epoch 4 exited", "rolled_back": True})
    ret = envoy_state.mod_watch("envoy", sfun="running")
    assert ret["result"] is False
    assert ret["changes"] == {"restart": "hot", "outcome": "failed", "epoch": 3, "rolled_back": True}
    assert ret["comment"] == ("envoy hot restart failed: epoch 4 exited; the previous config was put back; "
                              "the running epoch keeps serving")


def test_mod_watch_after_another_run_did_it_changes_nothing(salt_mods):
    salt_mods["envoy.reload"] = MagicMock(return_value={"kind": "none", "result": True, "comment": "another run ..."})
    ret = envoy_state.mod_watch("envoy")
    assert ret["changes"] == {} and ret["comment"] == "another run ..."


def test_dead_when_stopped_and_under_test(salt_mods, opts):
    salt_mods.update({"envoy.status": MagicMock(return_value=STOPPED), "envoy.orphans": MagicMock(return_value=[]),
                      "envoy.settings": MagicMock(return_value={"restart": {"full_restart_drain_s": 5}})})
    assert envoy_state.dead("envoy")["comment"] == "envoy is not running"
    opts["test"] = True
    salt_mods["envoy.status"] = MagicMock(return_value=RUNNING)
    salt_mods["envoy.stop"] = MagicMock()
    ret = envoy_state.dead("envoy")
    assert ret["result"] is None and ret["changes"]["stopped"] is True
    assert ret["comment"] == ("envoy would fail its health check, drain for 5s (envoy:restart:full_restart_drain_s), "
                              "then stop")
    salt_mods["envoy.stop"].assert_not_called()


def test_dead_drains_a_running_envoy_and_says_so(salt_mods):
    salt_mods.update({"envoy.status": MagicMock(return_value=RUNNING),
                      "envoy.settings": MagicMock(return_value={"restart": {"full_restart_drain_s": 5}}),
                      "envoy.stop": MagicMock(return_value={"orphans_stopped": [], "steps": [
                          "healthcheck failed", "drained 5s", "stopped"]})})
    ret = envoy_state.dead("envoy")
    salt_mods["envoy.stop"].assert_called_once_with(drain=True)
    assert ret["comment"] == "envoy stopped after draining: healthcheck failed, drained 5s"
    salt_mods["envoy.stop"] = MagicMock(return_value={"orphans_stopped": [], "stopped": True})
    assert envoy_state.dead("envoy", drain=False)["comment"] == "envoy stopped"
    salt_mods["envoy.stop"].assert_called_once_with(drain=False)


# --- discovery --------------------------------------------------------------------------------------

ENTRY = {"service": "users", "ip": "10.0.0.7", "port": 8081, "listed": True, "current": False}


def test_registered_with_manifest_problems_fails(salt_mods):
    salt_mods["envoy.registration_status"] = MagicMock(return_value={"services": [], "url": "http://d",
                                                                     "problems": ["/m/x.yaml: service: missing"]})
    ret = envoy_state.registered("envoy-discovery")
    assert ret["result"] is False and ret["comment"] == "manifest problems: /m/x.yaml: service: missing"


def test_registered_stale_registers_and_test_mode_predicts(salt_mods, opts):
    salt_mods["envoy.registration_status"] = MagicMock(return_value={"services": [ENTRY], "url": "http://d",
                                                                     "problems": []})
    salt_mods["envoy.register"] = MagicMock(return_value={"url": "http://d", "registered": ["users 10.0.0.7:8081"]})
    opts["test"] = True
    predicted = envoy_state.registered("envoy-discovery")
    assert predicted["result"] is None and predicted["changes"] == {"registered": ["users 10.0.0.7:8081"]}
    salt_mods["envoy.register"].assert_not_called()
    opts["test"] = False
    done = envoy_state.registered("envoy-discovery")
    assert done["result"] is True and done["comment"] == "registered with http://d: users 10.0.0.7:8081"


def test_deregistered_when_unreachable_fails_clearly(salt_mods):
    salt_mods["envoy.registration_status"] = MagicMock(side_effect=CommandExecutionError("users: cannot list hosts"))
    ret = envoy_state.deregistered("envoy-discovery")
    assert (ret["result"], ret["changes"], ret["comment"]) == (False, {}, "users: cannot list hosts")


def test_discovery_server_restarted_when_its_settings_changed(salt_mods):
    salt_mods["envoy.discovery_server_status"] = MagicMock(return_value={
        "running": True, "current": False, "pid": 4, "command": ["envoy-discovery", "--ttl", "300"]})
    salt_mods["envoy.discovery_server_start"] = MagicMock(return_value={"started": True, "pid": 9})
    ret = envoy_state.discovery_server_running("envoy-discovery")
    assert ret["changes"] == {"restarted": "envoy-discovery --ttl 300", "pid": 9}
    assert ret["comment"] == "the discovery service restarted (pid 9), healthy"


# --- mesh TLS --------------------------------------------------------------------------------------

@pytest.fixture
def mesh_host(tmp_path):
    from envoy_formula import host_settings

    pillar = {"roles": ["sidecar"], "lookup": {"root": str(tmp_path)},
              "mesh_tls": {"mode": "strict", "trust_domain": "mesh.test", "ca": {"minion": "ca1"}}}
    host = host_settings.resolve(pillar, euid=1000)
    os.makedirs(host["manifest_dir"])
    os.makedirs(host["pki_dir"] + "/sds")
    return host


def test_mesh_ca_trusted_writes_the_mine_s_ca_once_and_predicts_under_test(salt_mods, opts, mesh_host):
    from tests.helpers.pki import TestCA

    ca = TestCA()
    path = mesh_host["pki_dir"] + "/mesh-ca.crt"
    salt_mods["envoy.settings"] = MagicMock(return_value=mesh_host)
    salt_mods["mine.get"] = MagicMock(return_value={"ca1": ca.pem()})
    opts["test"] = True
    ret = envoy_state.mesh_ca_trusted(path)
    assert ret["result"] is None and ret["changes"]["old"] is None and "from ca1" in ret["changes"]["new"]
    assert not os.path.exists(path)
    opts["test"] = False
    ret = envoy_state.mesh_ca_trusted(path)
    assert ret["result"] is True and ret["changes"] and open(path).read() == ca.pem()
    ret = envoy_state.mesh_ca_trusted(path)
    assert ret["result"] is True and ret["changes"] == {} and "is trusted" in ret["comment"]


def test_mesh_ca_trusted_fails_clearly_without_a_ca_in_the_mine(salt_mods, mesh_host):
    salt_mods["envoy.settings"] = MagicMock(return_value=mesh_host)
    salt_mods["mine.get"] = MagicMock(return_value={})
    path = mesh_host["pki_dir"] + "/mesh-ca.crt"
    ret = envoy_state.mesh_ca_trusted(path)
    assert ret["result"] is False and ret["changes"] == {}
    assert "apply envoy.identity.ca on ca1 first" in ret["comment"] and not os.path.exists(path)


def test_mesh_secrets_published_predicts_under_test_then_publishes_once(salt_mods, opts, mesh_host):
    from tests.helpers.pki import TestCA

    ca = TestCA()
    with open(mesh_host["manifest_dir"] + "/bar.yaml", "w") as handle:
        handle.write("service: bar\ningress: {port: 9211, app_port: 8081}\n")
    with open(mesh_host["pki_dir"] + "/mesh-ca.crt", "w") as handle:
        handle.write(ca.pem())
    ca.write_identity(mesh_host["pki_dir"], "bar", "spiffe://mesh.test/service/bar")
    salt_mods["envoy.settings"] = MagicMock(return_value=mesh_host)
    sds = mesh_host["pki_dir"] + "/sds"
    opts["test"] = True
    ret = envoy_state.mesh_secrets_published(sds)
    assert ret["result"] is None and set(ret["changes"]["published"]) == {"mesh_ca", "mesh_bar"}
    assert os.listdir(sds) == []
    opts["test"] = False
    ret = envoy_state.mesh_secrets_published(sds)  # no Envoy answers: nothing to confirm
    assert ret["result"] is True and set(ret["changes"]["published"]) == {"mesh_ca", "mesh_bar"}, ret
    assert "PRIVATE KEY" not in repr(ret)
    ret = envoy_state.mesh_secrets_published(sds)
    assert ret["result"] is True and ret["changes"] == {}


def test_mesh_ca_published_sends_to_the_mine_only_when_its_copy_differs(salt_mods, opts, mesh_host):
    from tests.helpers.pki import TestCA

    ca = TestCA()
    os.makedirs(mesh_host["pki_dir"] + "/ca")
    path = mesh_host["pki_dir"] + "/ca/mesh-ca.crt"
    with open(path, "w") as handle:
        handle.write(ca.pem())
    salt_mods["envoy.settings"] = MagicMock(return_value=mesh_host)
    salt_mods["mine.get"] = MagicMock(return_value={})
    salt_mods["mine.send"] = MagicMock(return_value=False)
    ret = envoy_state.mesh_ca_published(path)
    assert ret["result"] is False and ret["changes"] == {} and "master reachable" in ret["comment"]
    salt_mods["mine.send"] = MagicMock(return_value=True)
    ret = envoy_state.mesh_ca_published(path)
    assert ret["result"] is True and ret["changes"] == {"mine": "envoy_mesh_ca"}
    salt_mods["mine.send"].assert_called_once_with("envoy_mesh_ca", mine_function="envoy.mesh_ca_certificate")
    salt_mods["mine.get"] = MagicMock(return_value={"web1": ca.pem()})
    salt_mods["mine.send"].reset_mock()
    ret = envoy_state.mesh_ca_published(path)
    assert ret["result"] is True and ret["changes"] == {}
    salt_mods["mine.send"].assert_not_called()


def test_mesh_secrets_published_on_a_new_host_under_test_predicts_instead_of_failing(salt_mods, opts, mesh_host):
    """test=True before the first run: the x509 states only predicted the key and certificate."""
    with open(mesh_host["manifest_dir"] + "/bar.yaml", "w") as handle:
        handle.write("service: bar\ningress: {port: 9211, app_port: 8081}\n")
    salt_mods["envoy.settings"] = MagicMock(return_value=mesh_host)
    sds = mesh_host["pki_dir"] + "/sds"
    opts["test"] = True
    ret = envoy_state.mesh_secrets_published(sds)
    assert ret["result"] is None and ret["changes"], ret
    assert "bar.key" in ret["comment"] and "mesh-ca.crt" in ret["comment"]
    opts["test"] = False  # for real, the requisites ran the x509 states first: a missing key is an error
    ret = envoy_state.mesh_secrets_published(sds)
    assert ret["result"] is False and ret["changes"] == {} and "x509 states must write it first" in ret["comment"]
    assert os.listdir(sds) == []
