"""
What a converged Envoy host looks like, checked from outside the formula with pytest-testinfra.
The same checks run under `kitchen verify` and in CI's throwaway host (see conftest.py).
"""

import json

import pytest


def admin(host, settings, path):
    cmd = host.run(f"python3 -c \"import urllib.request,sys; "
                   f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{settings['admin_port']}{path}', "
                   f"timeout=5).read().decode())\"")
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout


def test_envoy_user_is_a_system_account(host, settings):
    user = host.user(settings["user"])
    assert user.exists
    assert user.uid < 1000
    assert user.shell.endswith("nologin")


def test_current_bundle_is_a_verified_release(host, settings):
    current = host.file(f"{settings['install_dir']}/current")
    assert current.is_symlink
    assert current.linked_to.startswith(f"{settings['install_dir']}/releases/")
    envoy = host.file(f"{settings['install_dir']}/current/bin/envoy")
    assert envoy.is_file and envoy.mode & 0o111
    manifest = json.loads(host.file(f"{settings['install_dir']}/current/bundle.json").content_string)
    assert current.linked_to.endswith(manifest["bundle_id"])
    version = host.run(f"{settings['install_dir']}/current/bin/envoy --version")
    assert manifest["envoy_version"] in version.stdout


def test_config_is_private_to_root_and_envoy(host, settings):
    config = host.file(settings["config_file"])
    assert config.is_file
    assert config.mode == 0o640
    assert config.user == "root"
    assert config.group == settings["user"]


def test_config_validates_with_the_bundle_binary(host, settings):
    cmd = host.run(f"{settings['install_dir']}/current/bin/envoy --mode validate -c {settings['config_file']}")
    assert cmd.rc == 0, cmd.stderr


def test_envoy_runs_as_its_user_under_the_restarter(host, settings):
    envoys = host.process.filter(comm="envoy")
    assert envoys, "no envoy process"
    assert {p.user for p in envoys} == {settings["user"]}
    restarter_pid = int(host.file(f"{settings['run_dir']}/restarter.pid").content_string.split()[0])
    assert all(p.ppid == restarter_pid for p in envoys)


def test_envoy_keeps_only_the_bind_capability(host, settings):
    """The restarter (root) drops each epoch to the envoy user with CAP_NET_BIND_SERVICE alone, so
    an edge can bind 80/443 whichever supervisor runs it."""
    for envoy in host.process.filter(comm="envoy"):
        status = host.file(f"/proc/{envoy.pid}/status").content_string
        caps = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Cap"))
        assert int(caps["CapEff"], 16) == int(caps["CapAmb"], 16) == 1 << 10, caps  # CAP_NET_BIND_SERVICE


def test_envoy_is_live(host, settings):
    assert admin(host, settings, "/ready").strip() == "LIVE"
    status = json.loads(host.file(f"{settings['run_dir']}/status.json").content_string)
    assert status["live_epoch"] is not None


def test_admin_listens_on_loopback_only(host, settings):
    assert host.socket(f"tcp://127.0.0.1:{settings['admin_port']}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{settings['admin_port']}").is_listening


@pytest.mark.parametrize("port", [9001])
def test_sidecar_egress_on_loopback(host, port):
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_access_log_written(host, settings):
    logs = host.run(f"ls {settings['log_dir']}").stdout.split()
    assert any(name.endswith(".log") for name in logs), logs
