"""
The execution module's restart settings and supervisor choice (pure logic; the operations run for
real in tests/integration/test_running_state.py).
"""

import pytest
from salt.exceptions import CommandExecutionError

from tests.helpers.bundles import load_envoy_module


def module_with(pillar=None, grains=None, lookup=None):
    module = load_envoy_module(lookup=lookup)
    pillar = pillar or {}

    def config_get(key, default=None):
        if key == "envoy:lookup":
            return lookup or {}
        node = pillar
        for part in key.split(":"):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    module.__salt__["config.get"] = config_get
    module.__grains__ = grains or {}
    return module


def test_sidecar_defaults_and_front_takes_the_longer_timings():
    sidecar = module_with({"envoy": {"roles": ["sidecar"]}}).restart_settings()
    assert (sidecar["drain_time_s"], sidecar["parent_shutdown_time_s"]) == (60, 90)
    assert sidecar["full_restart_drain_s"] == 60
    both = module_with({"envoy": {"roles": ["sidecar", "front"]}}).restart_settings()
    assert (both["drain_time_s"], both["parent_shutdown_time_s"]) == (300, 450)


def test_pillar_role_tables_then_flat_keys_then_kwargs_win():
    pillar = {"envoy": {"roles": ["front"], "restart": {
        "roles": {"front": {"drain_time_s": 120}}, "stop_timeout_s": 9, "full_restart_drain_s": 5}}}
    merged = module_with(pillar).restart_settings(live_timeout_s=7, unrelated="ignored")
    assert merged["drain_time_s"] == 120 and merged["parent_shutdown_time_s"] == 450
    assert (merged["stop_timeout_s"], merged["full_restart_drain_s"], merged["live_timeout_s"]) == (9, 5, 7)
    assert "unrelated" not in merged


@pytest.mark.parametrize("restart, message", [
    ({"drain_time_s": 90, "parent_shutdown_time_s": 60}, "drain_time_s=90 must be below parent_shutdown_time_s=60"),
    ({"live_timeout_s": 0}, "envoy:restart:live_timeout_s=0: expected a positive number"),
    ({"stop_timeout_s": "soon"}, "envoy:restart:stop_timeout_s='soon'"),
])
def test_bad_restart_pillar_names_the_field(restart, message):
    with pytest.raises(CommandExecutionError, match=message):
        module_with({"envoy": {"restart": restart}}).restart_settings()


def test_supervisor_auto_is_daemon_in_a_sandbox_or_without_systemd(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("os.access", lambda path, mode: True)
    assert module_with(grains={"init": "systemd"}).supervisor() == "systemd"
    assert module_with(grains={"init": "sysvinit"}).supervisor() == "daemon"
    assert module_with(grains={"init": "systemd"}, lookup={"root": "/tmp/sandbox"}).supervisor() == "daemon"
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert module_with(grains={"init": "systemd"}).supervisor() == "daemon"
    assert module_with(lookup={"supervisor": "systemd"}).supervisor() == "systemd"
    with pytest.raises(CommandExecutionError, match="envoy:lookup:supervisor='upstart'"):
        module_with(lookup={"supervisor": "upstart"}).supervisor()


def test_restarter_command_runs_the_current_bundles_launcher():
    module = module_with({"envoy": {"restart": {"concurrency": 2, "envoy_args": ["--log-level", "warn"]}}},
                         lookup={"admin_port": 9902, "base_id": 3})
    command = module.restarter_command()
    assert command[1] == "/opt/envoy/current/bin/envoy-restarter"
    joined = " ".join(command)
    for expected in ("--install-dir /opt/envoy ", "--config /etc/envoy/envoy.yaml", "--base-id 3",
                     "--admin-port 9902", "--run-dir /run/envoy", "--drain-time-s 60",
                     "--parent-shutdown-time-s 90", "--envoy-arg=--concurrency=2", "--envoy-arg=--log-level"):
        assert expected in joined


@pytest.mark.parametrize(("owner", "user", "refused"), [
    ("root", "root", False),      # root may replace anything
    ("nobody", "root", False),
    ("nobody", "nobody", False),  # the owner may replace its own
    ("root", "nobody", True),     # the field-notes trap: a root Envoy's memory blocks an unprivileged one
])
def test_hot_restart_memory_left_by_another_user_is_refused_before_start(tmp_path, owner, user, refused):
    import os
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root: creates files owned by other users")
    module = module_with()
    module.OP_SHM_DIR = str(tmp_path)
    segment = tmp_path / "envoy_shared_memory_420"
    segment.write_bytes(b"\0" * 104)
    os.chown(segment, pwd.getpwnam(owner).pw_uid, -1)
    host = {"base_id": 42, "user": user}
    if refused:
        with pytest.raises(CommandExecutionError) as err:
            module._op_check_shared_memory(host)
        assert f"{segment} belongs to {owner}" in str(err.value)
        assert "base_id 42" in str(err.value) and "envoy:lookup:base_id" in str(err.value)
    else:
        module._op_check_shared_memory(host)
    module._op_check_shared_memory({"base_id": 43, "user": user})  # no segment: nothing to say
