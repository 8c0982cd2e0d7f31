"""
The lab itself (tests/helpers/lab.py): hosts with their own address, hostname, processes and disk on
a bridge nobody else is on; a power loss that looks like one from the network; a reboot that keeps
the disk and loses /run; a teardown that leaves nothing behind. Needs root.
"""

import sys
import time

import pytest

from tests.helpers import lab as lab_module
from tests.helpers.lab import LAB, Lab, LabError, require_lab

LISTEN = (f"{sys.executable} -c \"import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 7000)); "
          "s.listen(); time.sleep(3600)\"")


@pytest.fixture
def lab(tmp_path):
    require_lab()
    with Lab(tmp_path / "lab", ["alpha", "beta"]) as running:
        yield running
    assert running.leftovers() == [], "teardown left processes in the lab's namespaces"
    assert not (tmp_path / "lab" / "disks").exists()


def connect(lab, host, address, port=7000, timeout=1.5):
    """What a TCP connect from ``host`` to ``address`` does: connected, refused or timeout."""
    code = (f"import socket\ns = socket.socket(); s.settimeout({timeout})\n"
            f"try:\n    s.connect(({address!r}, {port})); print('connected')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except socket.timeout: print('timeout')\n"
            "except OSError as e: print(type(e).__name__, e.errno)")
    return lab.run(host, [sys.executable, "-c", code]).stdout.strip()


def test_hosts_have_their_own_network_name_and_processes(lab):
    assert lab.run("alpha", ["hostname"]).stdout.strip() == "alpha"
    assert lab.run("beta", ["hostname"]).stdout.strip() == "beta"
    addresses = lab.run("alpha", ["ip", "-o", "-4", "addr", "show"]).stdout
    assert f"inet {lab.address('alpha')}/24" in addresses and "inet 127.0.0.1/8" in addresses
    # Only the lab's own subnet: no default route, so no address outside the lab is reachable.
    assert lab.run("alpha", ["ip", "route"]).stdout.split()[0] == "10.77.0.0/24"
    unreachable = lab.run("alpha", ["ip", "route", "get", "192.0.2.1"], check=False)
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr
    assert lab.run(LAB, ["ip", "route"]).stdout.split()[0] == "10.77.0.0/24"
    # Its own pid namespace: the host's init is pid 1 and nothing of this machine is visible.
    assert sorted(lab.processes("alpha"))[0] == 1 and len(lab.processes("alpha")) < 5
    lab.daemon("beta", LISTEN, log="/var/log/listen.log")
    time.sleep(0.5)
    assert connect(lab, "alpha", "beta") == "connected"  # /etc/hosts names the lab's hosts
    assert connect(lab, LAB, lab.address("beta")) == "connected"


def test_disks_are_private_and_production_paths_start_empty(lab):
    lab.run("alpha", "useradd --system --no-create-home labuser && echo x > /opt/envoy/marker")
    assert "labuser" in lab.path("alpha", "/etc/passwd").read_text()
    assert "labuser" not in lab.path("beta", "/etc/passwd").read_text()
    assert "labuser" not in open("/etc/passwd").read()
    for path in ("/opt/envoy", "/etc/envoy", "/var/log/envoy", "/etc/salt", "/var/cache/salt"):
        assert lab.run("beta", ["ls", "-A", path]).stdout == "", path
    lab.run("alpha", "touch /dev/shm/envoy_shared_memory_0")  # hot restart memory is per host
    assert lab.run("beta", ["ls", "-A", "/dev/shm"]).stdout == ""


def test_power_loss_is_silent_and_a_reboot_keeps_the_disk(lab):
    lab.install_boot_unit("beta", "50-listen", f"setsid -f {LISTEN} </dev/null >/dev/null 2>&1")
    lab.run("beta", "/etc/lab/boot.d/50-listen; echo disk > /etc/kept; echo ram > /run/lost; echo tmp > /tmp/lost")
    time.sleep(0.5)
    assert connect(lab, "alpha", "beta") == "connected"
    lab.power_off("beta")
    with pytest.raises(LabError):
        lab.run("beta", ["true"])
    # A host without power answers nothing: no RST, so the connect times out (like a real one).
    assert connect(lab, "alpha", "beta") == "timeout"
    lab.power_on("beta")
    assert lab.run("beta", ["cat", "/etc/kept"]).stdout.strip() == "disk"
    assert not lab.path("beta", "/run/lost").exists() and not lab.path("beta", "/tmp/lost").exists()
    deadline = time.monotonic() + 10
    while connect(lab, "alpha", "beta") != "connected":  # the boot unit started it again
        assert time.monotonic() < deadline, "the boot unit did not run after the reboot"
        time.sleep(0.2)


def test_without_root_or_tools_the_lab_says_why(monkeypatch):
    """Runs anywhere: what a test that needs the lab skips with."""
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    assert "needs root" in lab_module.missing_requirements()
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_module.shutil, "which", lambda tool: None if tool == "nsenter" else "/usr/bin/" + tool)
    assert lab_module.missing_requirements().startswith("needs nsenter")
