"""The restarter's command line and the pre-start checks (pure logic; the operations run for real
in tests/integration/test_running_state.py and tests/fleet/test_throwaway_host.py)."""

import os
import pwd

import pytest
from envoy_formula import host_settings, preflight, privileges, supervisor
from envoy_formula.errors import EnvoyFormulaError


def test_restarter_command_runs_the_current_bundles_launcher():
    host = host_settings.resolve({"restart": {"concurrency": 2, "envoy_args": ["--log-level", "warn"]},
                                  "lookup": {"admin_port": 9902, "base_id": 3}}, euid=1000)
    command = supervisor.restarter_command(host, python="/usr/bin/python3")
    assert command[:2] == ["/usr/bin/python3", "/opt/envoy/current/bin/envoy-restarter"]
    joined = " ".join(command)
    for expected in ("--install-dir /opt/envoy ", "--config /etc/envoy/envoy.yaml", "--base-id 3",
                     "--admin-port 9902", "--run-dir /run/envoy", "--drain-time-s 60",
                     "--parent-shutdown-time-s 90", "--envoy-arg=--concurrency=2", "--envoy-arg=--log-level",
                     # The restarter stays root; it starts Envoy as the envoy user.
                     "--user envoy --group envoy"):
        assert expected in joined
    as_root = host_settings.resolve({"lookup": {"user": "root"}}, euid=0)
    assert "--user" not in supervisor.restarter_command(as_root)


def test_dropping_to_the_envoy_user_keeps_only_the_bind_capability():
    argv = privileges.drop_command(101, 102)
    assert argv[0].endswith("setpriv") and argv[-1] == "--"
    assert {"--reuid=101", "--regid=102", "--clear-groups", "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service", "--bounding-set=-all,+net_bind_service"} <= set(argv)


@pytest.mark.parametrize(("owner", "user", "refused"), [
    ("root", "root", False),      # root may replace anything
    ("nobody", "root", False),
    ("nobody", "nobody", False),  # the owner may replace its own
    ("root", "nobody", True),     # the field-notes trap: a root Envoy's memory blocks an unprivileged one
])
def test_hot_restart_memory_left_by_another_user_is_refused_before_start(tmp_path, monkeypatch, owner, user, refused):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates files owned by other users")
    monkeypatch.setattr(preflight, "SHM_DIR", str(tmp_path))
    segment = tmp_path / "envoy_shared_memory_420"
    segment.write_bytes(b"\0" * 104)
    os.chown(segment, pwd.getpwnam(owner).pw_uid, -1)
    host = {"base_id": 42, "user": user, "group": "nogroup" if user == "nobody" else "root"}
    if refused:
        with pytest.raises(EnvoyFormulaError) as err:
            preflight.check_shared_memory(host)
        assert f"{segment} belongs to {owner}" in str(err.value)
        assert "base_id 42" in str(err.value) and "envoy:lookup:base_id" in str(err.value)
    else:
        preflight.check_shared_memory(host)
    preflight.check_shared_memory({**host, "base_id": 43})  # no segment: nothing to say


def test_the_hot_restart_version_ignores_what_envoy_logs_before_it():
    from envoy_formula import lifecycle

    logged = ("[2026-11-27 08:00:00.000][1][warning][misc] Expected cgroup v1 files not accessible\n"
              "11.104\n")
    assert lifecycle.hot_restart_version_in(logged) == "11.104"
    assert lifecycle.hot_restart_version_in("error: no such option\n") is None
