"""
The formula's discovery side through the real ``salt-call --local`` on a sandbox host that is
also named a discovery server: ``envoy.discovery`` starts the service (a real daemon), registers
the services the host's manifests serve, schedules the heartbeat, and, when registration is
disabled, deregisters. test=True predicts, a second run changes nothing, bad input fails clearly.
"""

import json
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers.discovery import DiscoveryService, Process
from tests.helpers.net import free_port, wait_for
from tests.helpers.sandbox import SandboxHost, deep_merge

DISCOVERY_CMD = str(Path(sys.executable).with_name("envoy-discovery"))
SLS = "envoy.discovery"
SERVER, REGISTERED = "envoy-discovery-server-running", "envoy-discovery-registered"
SCHEDULE = "envoy-discovery-schedule-present"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    port = free_port()
    pillar = {"envoy": {"discovery": {
        "address": f"127.0.0.1:{port}",
        "register": {"ip": "127.0.0.7", "tags": {"az": "us-east-1b", "instance_id": "i-web1"}},
        "server": {"hosts": ["web1"], "listen": f"127.0.0.1:{port}", "ttl": 600, "command": DISCOVERY_CMD},
    }}}
    sandbox = SandboxHost(tmp_path_factory.mktemp("discovery-salt"), minion_id="web1", pillar=pillar)
    manifests = Path(sandbox.settings["manifest_dir"])
    manifests.mkdir(parents=True)
    (manifests / "users.yaml").write_text("service: users\ningress: {port: 8081, app_port: 8080}\n")
    (manifests / "orders.yaml").write_text("service: orders\ningress: {port: 8082, app_port: 8090}\n")
    (manifests / "client.yaml").write_text("service: reporting\nupstreams: [{service: users}]\n")
    sandbox.sync()
    sandbox.url = f"http://127.0.0.1:{port}"
    yield sandbox
    sandbox.salt_call("envoy.discovery_server_stop", check=False)


def summary(out):
    return {state: (ret["result"], ret["changes"]) for state, ret in out.items()}


def listed(host, service):
    return requests.get(f"{host.url}/v1/registration/{service}", timeout=5).json()["hosts"]


def test_test_mode_predicts_and_changes_nothing(host):
    out = host.apply(SLS, test=True)
    assert out[SERVER]["result"] is None and "started" in out[SERVER]["changes"]
    # The service is not running yet, so the registration state cannot ask it: a clear failure.
    assert out[REGISTERED]["result"] is False and "cannot list hosts" in out[REGISTERED]["comment"]
    _, status = host.salt_call("envoy.discovery_server_status")
    assert status["running"] is False


def test_first_run_starts_the_service_registers_and_schedules(host):
    out = host.apply(SLS)
    assert all(ret["result"] is True for ret in out.values()), json.dumps(out, indent=1)
    assert out[REGISTERED]["changes"] == {"registered": ["orders 127.0.0.7:8082", "users 127.0.0.7:8081"]}
    [users] = listed(host, "users")
    assert (users["ip_address"], users["port"]) == ("127.0.0.7", 8081)
    assert users["tags"] == {"az": "us-east-1b", "region": "us-east-1", "instance_id": "i-web1"}
    assert listed(host, "reporting") == []  # no ingress: nothing to register
    _, jobs = host.salt_call("schedule.list", "return_yaml=False", "offline=True")
    job = jobs["envoy-discovery-register"]
    assert (job["function"], job["minutes"], job["splay"], job["maxrunning"]) == ("envoy.register", 1, 20, 1)


def test_second_run_changes_nothing(host):
    out = host.apply(SLS)
    assert {state: changes for state, (_, changes) in summary(out).items() if changes} == {}
    assert all(ret["result"] is True for ret in out.values())


def test_a_heartbeat_and_a_changed_revision(host):
    before = listed(host, "users")[0]["last_check_in"]
    _, out = host.salt_call("envoy.register")
    assert sorted(out["registered"]) == ["orders 127.0.0.7:8082", "users 127.0.0.7:8081"]
    assert listed(host, "users")[0]["last_check_in"] > before
    (Path(host.settings["manifest_dir"]) / "users.yaml").write_text(
        "service: users\ningress: {port: 8081, app_port: 8080, timeout_ms: 2000}\n")
    out = host.apply(SLS)
    assert out[REGISTERED]["changes"] == {"registered": ["users 127.0.0.7:8081"]}


def test_changed_server_settings_restart_the_service(host):
    _, before = host.salt_call("envoy.discovery_server_status")
    pillar = deep_merge(host.pillar, {"envoy": {"discovery": {"server": {"ttl": 300}}}})
    host.set_pillar(pillar)
    out = host.apply(SLS)
    assert out[SERVER]["result"] is True and "restarted" in out[SERVER]["changes"], out[SERVER]
    _, after = host.salt_call("envoy.discovery_server_status")
    assert after["running"] and after["current"] and after["pid"] != before["pid"]
    assert "--ttl 300" in " ".join(after["command"])
    # SQLite on disk: the registrations survived the restart.
    assert len(listed(host, "users")) == 1


def test_bad_tags_fail_clearly_and_register_nothing(host):
    before = listed(host, "users")
    out = host.apply(SLS, pillar={"envoy": {"discovery": {"register": {"tags": {"canary": "maybe"}}}}})
    assert out[REGISTERED]["result"] is False and out[REGISTERED]["changes"] == {}
    assert "users 127.0.0.7:8081: refused with HTTP 400: tags.canary: must be true or false" in \
        out[REGISTERED]["comment"]
    assert listed(host, "users") == before


def test_disabling_registration_deregisters_and_unschedules(host):
    pillar = deep_merge(host.pillar, {"envoy": {"discovery": {"register": {"enabled": False}}}})
    host.set_pillar(pillar)
    preview = host.apply(SLS, test=True)
    assert preview["envoy-discovery-deregistered"]["result"] is None
    assert len(listed(host, "users")) == 1
    out = host.apply(SLS)
    assert out["envoy-discovery-deregistered"]["changes"] == {
        "deregistered": ["orders 127.0.0.7:8082", "users 127.0.0.7:8081"]}
    assert out["envoy-discovery-schedule-absent"]["result"] is True
    assert listed(host, "users") == [] and listed(host, "orders") == []
    again = host.apply(SLS)
    assert {state: changes for state, (_, changes) in summary(again).items() if changes} == {}


def test_a_host_no_longer_named_stops_the_service(host):
    pillar = deep_merge(host.pillar, {"envoy": {"discovery": {"server": {"hosts": ["someone-else"]}}}})
    host.set_pillar(pillar)
    out = host.apply(SLS)
    assert out["envoy-discovery-server-dead"]["result"] is True
    assert "stopped" in out["envoy-discovery-server-dead"]["changes"]
    _, status = host.salt_call("envoy.discovery_server_status")
    assert status["running"] is False


def test_a_real_minion_scheduler_keeps_the_host_alive(tmp_path):
    """The schedule job the state writes, run by a real salt-minion (masterless: no pillar in its
    scheduler, so the job carries its own settings), heartbeats every `seconds`."""
    with DiscoveryService(tmp_path, ttl=600) as service:
        sandbox = SandboxHost(tmp_path / "host", minion_id="web2", pillar={"envoy": {"discovery": {
            "url": service.url,
            "register": {"ip": "127.0.0.8", "seconds": 1, "splay": 1, "tags": {"az": "us-east-1c"}}}}})
        manifests = Path(sandbox.settings["manifest_dir"])
        manifests.mkdir(parents=True)
        (manifests / "users.yaml").write_text("service: users\ningress: {port: 8081, app_port: 8080}\n")
        sandbox.sync()
        out = sandbox.apply(SLS)
        assert all(ret["result"] is True for ret in out.values()), out
        (sandbox.conf_dir / "minion.d").mkdir(exist_ok=True)
        (sandbox.conf_dir / "minion.d" / "masterless.conf").write_text("master_type: disable\n")
        minion = Process([str(Path(sys.executable).with_name("salt-minion")), "-c", str(sandbox.conf_dir)],
                         tmp_path / "minion.log")
        try:
            check_ins = set()

            def heartbeats_seen():
                hosts = requests.get(f"{service.url}/v1/registration/users", timeout=5).json()["hosts"]
                check_ins.update(h["last_check_in"] for h in hosts)
                return len(check_ins) >= 4

            wait_for(heartbeats_seen, timeout=30, interval=0.3, what="3 scheduled heartbeats")
        finally:
            minion.stop()
        assert "Unhandled exception" not in minion.log_tail(20000)
