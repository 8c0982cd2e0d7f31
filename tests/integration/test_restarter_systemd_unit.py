"""
``supervisor: systemd``: envoy.service as the real salt-call renders it, and the unit it installs
(rendered from salt/envoy/files/default/envoy.service.jinja with the context Salt passes, then checked by
``systemd-analyze verify`` when available). No systemd runs here; the daemon supervisor is what
the other integration tests exercise for real.
"""

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

from tests.helpers.envoy_host import make_release, switch_current
from tests.helpers.sandbox import SandboxHost

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "salt" / "envoy" / "files" / "default" / "envoy.service.jinja"


def state_args(chunk):
    """show_sls gives a state's arguments as a list of one-key dicts."""
    (_fun_args,) = [v for k, v in chunk.items() if not k.startswith("__")]
    args = {}
    for item in _fun_args:
        if isinstance(item, dict):
            args.update(item)
    return args


def render_unit(context):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(**context)


@pytest.fixture(scope="module")
def shown(tmp_path_factory, envoy_bin):
    host = SandboxHost(tmp_path_factory.mktemp("systemd-host"), minion_id="systemd-unit",
                       pillar={"envoy": {"lookup": {"supervisor": "systemd"},
                                         "restart": {"stop_timeout_s": 20}}})
    host.sync()
    _, ret = host.salt_call("state.show_sls", "envoy.service")
    return host, ret, envoy_bin


def test_service_sls_installs_the_unit_and_watches_bundle_and_config(shown):
    _, ret, _ = shown
    for state_id in ("envoy-service-unit-managed", "envoy-service-unit-loaded", "envoy-service-enabled",
                     "envoy-service-running"):
        assert state_id in ret, sorted(ret)
    running = state_args(ret["envoy-service-running"])
    assert running["watch"] == ["envoy-bundle-installed", "envoy-config-file-managed"]
    assert {"sls": "envoy.config"} in running["require"]
    unit = state_args(ret["envoy-service-unit-managed"])
    assert unit["name"].endswith("/etc/systemd/system/envoy.service")
    # TOFS: a per-minion and per-os_family override come before the formula's own template.
    assert unit["source"][0] == "salt://envoy/files/systemd-unit/envoy.service.jinja"
    assert unit["source"][-1] == "salt://envoy/files/default/envoy.service.jinja"


def test_the_unit_runs_the_restarter_and_reload_validates_then_hups(shown, tmp_path):
    host, ret, envoy_bin = shown
    context = state_args(ret["envoy-service-unit-managed"])["context"]
    unit = render_unit(context)
    lines = unit.splitlines()
    envoy = context["envoy"]
    assert f"ExecStart={' '.join(context['command'])}" in lines
    assert context["command"][1] == f"{envoy['install_dir']}/current/bin/envoy-restarter"
    reloads = [line for line in lines if line.startswith("ExecReload=")]
    assert reloads == [
        f"ExecReload=/usr/bin/setpriv --reuid={envoy['user']} --regid={envoy['group']} --clear-groups -- "
        f"{envoy['install_dir']}/current/bin/envoy --mode validate -c {envoy['config_file']}",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ]
    for expected in ("KillMode=mixed", "KillSignal=SIGTERM", "TimeoutStopSec=35", "Restart=on-failure",
                     "WantedBy=multi-user.target", "NoNewPrivileges=true"):
        assert expected in lines
    # The restarter runs as root and drops each Envoy epoch to the envoy user itself.
    assert not any(line.startswith(("User=", "Group=")) for line in lines)
    bounding = next(line for line in lines if line.startswith("CapabilityBoundingSet="))
    assert {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"} <= set(bounding.split("=", 1)[1].split())
    assert not any(line.startswith("RuntimeDirectory=") for line in lines)  # a sandbox run dir

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: content checked, not verified by systemd")
    # What ExecStart and ExecReload name must exist for systemd to accept the unit.
    make_release(envoy["install_dir"], "r1", envoy_bin)
    switch_current(envoy["install_dir"], "r1")
    unit_file = tmp_path / "envoy.service"
    unit_file.write_text(unit)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in verify.stderr.splitlines() if "envoy.service" in line]
    assert verify.returncode == 0 and not problems, verify.stderr


def test_a_run_dir_under_run_becomes_the_units_runtime_directory():
    envoy = {"user": "envoy", "group": "envoy", "install_dir": "/opt/envoy", "config_file": "/etc/envoy/envoy.yaml",
             "run_dir": "/run/envoy", "restart": {"stop_timeout_s": 30}}
    unit = render_unit({"envoy": envoy, "command": ["/usr/bin/python3", "/opt/envoy/current/bin/envoy-restarter"]})
    lines = unit.splitlines()
    assert "RuntimeDirectory=envoy" in lines and "RuntimeDirectoryPreserve=yes" in lines
    assert "TimeoutStopSec=45" in lines
