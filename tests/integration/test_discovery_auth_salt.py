"""
Authenticated registration through the formula with the real ``salt-call --local``: the
``envoy_discovery`` ext_pillar (here in the masterless minion's own config; on a fleet it runs on
the master, tests/mesh/test_discovery_fleet.py) issues this minion's token and, since it is also
named a discovery server, the keys. ``envoy.discovery`` writes both to 0600 files, starts the
service with ``--auth enforce`` and the pillar's workers and sweep guard, and registers with the
token from the address it registers. test=True predicts, a second run changes nothing, a service
pillar does not allow is refused with a message saying why, the clean path removes the files, and
the token and keys appear in no state output, no ``envoy.settings``, no schedule and no log.
"""

import json
import stat
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers.net import free_port
from tests.helpers.sandbox import SandboxHost

DISCOVERY_CMD = str(Path(sys.executable).with_name("envoy-discovery"))
SECRET = "Zk3" * 15
IP = "127.0.0.7"
SLS = "envoy.discovery"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("discovery-auth-salt")
    keys = base / "master-keys"
    keys.write_text(f"k1 {SECRET}\n")
    keys.chmod(0o600)
    port = free_port()
    pillar = {"envoy": {"discovery": {
        "address": f"127.0.0.1:{port}",
        "register": {"ip": IP, "tags": {"az": "us-east-1b", "instance_id": "i-web1"}},
        "auth": {"mode": "enforce", "services": ["users"], "addresses": [IP]},
        "server": {"hosts": ["web1"], "listen": f"127.0.0.1:{port}", "ttl": 600, "command": DISCOVERY_CMD,
                   "workers": 2, "sweep_guard": 0.4, "sweep_guard_min": 2, "sweep_grace": 120},
    }}}
    sandbox = SandboxHost(base / "web1", minion_id="web1", pillar=pillar,
                          minion_config={"ext_pillar": [{"envoy_discovery": {"keys_file": str(keys)}}]})
    manifests = Path(sandbox.settings["manifest_dir"])
    manifests.mkdir(parents=True)
    (manifests / "users.yaml").write_text("service: users\ningress: {port: 8081, app_port: 8080}\n")
    sandbox.sync()
    sandbox.url = f"http://127.0.0.1:{port}"
    yield sandbox
    sandbox.salt_call("envoy.discovery_server_stop", check=False)


def token_of(host):
    _, pillar = host.salt_call("pillar.get", "envoy:discovery:auth:token", "unmask=True")
    return pillar


def secrets(host):
    token = token_of(host)
    assert token and token.startswith("edt1.k1."), token
    return [token, token.split(".")[3], SECRET]


def assert_hidden(host, *outputs):
    log = host.base.joinpath("salt-root/var/log/salt/minion").read_text()
    assert "envoy-discovery-token" in log  # the debug log covers these runs: the check below means something
    for text in [json.dumps(o) for o in outputs] + [log]:
        for secret in secrets(host):
            assert secret not in text


def test_test_mode_says_where_not_what(host):
    out = host.apply(SLS, test=True)
    token_state = out["envoy-discovery-token-managed"]
    assert token_state["result"] is None
    assert token_state["changes"] == {"written": host.settings["config_dir"] + "/discovery/token"}
    assert out["envoy-discovery-server-keys-managed"]["changes"] == {
        "written": host.settings["config_dir"] + "/discovery/keys"}
    assert not Path(host.settings["config_dir"], "discovery", "token").exists()
    assert_hidden(host, out)


def test_first_run_writes_0600_files_starts_an_enforcing_server_and_registers(host):
    out = host.apply(SLS)
    assert all(ret["result"] is True for ret in out.values()), json.dumps(out, indent=1)
    for name in ("token", "keys"):
        path = Path(host.settings["config_dir"], "discovery", name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Path(host.settings["config_dir"], "discovery", "keys").read_text() == f"k1 {SECRET}\n"
    _, status = host.salt_call("envoy.discovery_server_status")
    command = " ".join(status["command"])
    assert "--auth enforce --auth-keys-file " in command
    assert "--workers 2 --sweep-guard 0.4 --sweep-guard-min 2 --sweep-grace 120" in command
    assert out["envoy-discovery-registered"]["changes"] == {"registered": [f"users {IP}:8081"]}
    metrics = requests.get(f"{host.url}/metrics", timeout=5).text
    assert "discovery_auth_verified_total 1" in metrics
    workers = Path(f"/proc/{status['pid']}/task/{status['pid']}/children").read_text().split()
    assert len(workers) == 2, workers
    assert_hidden(host, out, status)


def test_second_run_changes_nothing(host):
    out = host.apply(SLS)
    assert {k: v["changes"] for k, v in out.items() if v["changes"]} == {}
    assert all(ret["result"] is True for ret in out.values())


def test_the_token_is_in_no_setting_no_schedule_and_no_log(host):
    _, settings = host.salt_call("envoy.settings")
    _, jobs = host.salt_call("schedule.list", "return_yaml=False", "offline=True")
    _, heartbeat = host.salt_call("envoy.register")
    assert heartbeat["registered"] == [f"users {IP}:8081"]
    assert "token" not in settings["discovery"]["auth"] and "auth_keys" not in settings["discovery"]["server"]
    assert_hidden(host, settings, jobs, heartbeat)
    server_log = Path(host.settings["log_dir"], "envoy-discovery.log").read_text()
    for secret in secrets(host):
        assert secret not in server_log


def test_a_service_pillar_does_not_allow_is_refused_with_the_reason(host):
    extra = Path(host.settings["manifest_dir"], "orders.yaml")
    extra.write_text("service: orders\ningress: {port: 8082, app_port: 8090}\n")
    try:
        out = host.apply(SLS)
        registered = out["envoy-discovery-registered"]
        assert registered["result"] is False
        assert ("orders 127.0.0.7:8082: refused with HTTP 403: registration refused: minion web1 may not register "
                "service orders") in registered["comment"]
        assert "this host's token is for minion web1, services ['users']" in registered["comment"]
        assert requests.get(f"{host.url}/v1/registration/orders", timeout=5).json()["hosts"] == []
        assert_hidden(host, out)
    finally:
        extra.unlink()


def test_pillar_without_a_token_keeps_the_file_and_enforce_without_any_fails(host):
    no_token = {"envoy": {"discovery": {"auth": {"token": ""}}}}
    token_file = Path(host.settings["config_dir"], "discovery", "token")
    out = host.apply(SLS, pillar=no_token)
    assert out["envoy-discovery-token-managed"]["result"] is True
    assert "left as it is" in out["envoy-discovery-token-managed"]["comment"]
    assert token_file.exists()
    token_file.unlink()
    out = host.apply(SLS, pillar=no_token)
    assert out["envoy-discovery-token-managed"]["result"] is False
    assert "the registration token is needed (envoy:discovery:auth:mode is not off), but pillar has none" in \
        out["envoy-discovery-token-managed"]["comment"]
    assert out["envoy-discovery-registered"]["result"] is False  # required the token
    assert host.apply(SLS)["envoy-discovery-token-managed"]["changes"] == {"written": str(token_file)}


def test_clean_removes_the_token_and_the_keys(host):
    out = host.apply("envoy.discovery.clean")
    assert out["envoy-discovery-clean-token-absent"]["changes"] == {
        "removed": host.settings["config_dir"] + "/discovery/token"}
    assert out["envoy-discovery-server-clean-keys-absent"]["result"] is True
    assert not Path(host.settings["config_dir"], "discovery", "token").exists()
    assert not Path(host.settings["config_dir"], "discovery", "keys").exists()
    assert all(ret["result"] is True for ret in out.values()), json.dumps(out, indent=1)
