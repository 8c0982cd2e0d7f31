"""
Certificate rotation through SDS files with a real Envoy, no root and no Salt master: one sidecar
whose egress calls its own service over mTLS (bar calls bar, bar allows bar), rendered by the
generator in mode strict, with the key, certificate and CA files the formula keeps and the SDS
files ``mesh_identity.publish`` writes. (The certificates come from a test CA here; on the lab,
tests/mesh/test_mesh_tls.py, from Salt's x509 states and the CA minion.)

What it proves: Envoy ignores a certificate renamed into ``pki_dir`` (what Salt's x509 state does
before it fixes owner and mode), serves the new one once the SDS file is published, on the same
epoch, with not one request failed through egress -> mTLS -> ingress meanwhile.
"""

import os
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy_bundle.configgen import generate
from envoy_bundle.configgen.inputs import read_manifest_dir
from envoy_formula import host_settings, mesh_identity

from tests.helpers.net import free_port, wait_for
from tests.helpers.pki import TestCA

URI = "spiffe://mesh.test/service/bar"


class Sidecar:
    def __init__(self, tmp_path, envoy_bin):
        self.ports = {name: free_port() for name in ("ingress", "app", "egress", "admin")}
        pillar = {"roles": ["sidecar"], "lookup": {"root": str(tmp_path), "admin_port": self.ports["admin"]},
                  "listeners": {"egress": {"port": self.ports["egress"]}, "ingress": {"address": "127.0.0.1"}},
                  "services": {"bar": {"hosts": [f"127.0.0.1:{self.ports['ingress']}"], "callers": ["bar"],
                                       "health_check": False}},
                  "mesh_tls": {"mode": "strict", "trust_domain": "mesh.test", "ca": {"minion": "ca1"}}}
        self.host = host_settings.resolve(pillar, euid=1000)
        for directory in (self.host["manifest_dir"], self.host["log_dir"], self.host["pki_dir"] + "/sds"):
            os.makedirs(directory)
        with open(f"{self.host['manifest_dir']}/bar.yaml", "w") as handle:
            yaml.safe_dump({"service": "bar", "ingress": {"port": self.ports["ingress"], "app_port": self.ports["app"]},
                            "upstreams": [{"service": "bar"}]}, handle)
        self.ca = TestCA()
        with open(self.host["pki_dir"] + "/mesh-ca.crt", "w") as handle:
            handle.write(self.ca.pem())
        self.key, self.serial = self.ca.write_identity(self.host["pki_dir"], "bar", URI)
        assert set(mesh_identity.publish(self.host)) == {"mesh_ca", "mesh_bar"}
        facts = {"node_id": "sds-test", "admin_port": self.ports["admin"], "log_dir": self.host["log_dir"],
                 "pki_dir": self.host["pki_dir"]}
        config = tmp_path / "envoy.yaml"
        config.write_text(generate(read_manifest_dir(self.host["manifest_dir"]), pillar, facts))
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "tests.helpers.app", "--port", str(self.ports["app"]),
                              "--name", "bar"]),
            subprocess.Popen([envoy_bin, "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
                              "--log-level", "warn"], stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "envoy.log", "w")),  # noqa: SIM115 - closed with the process
        ]
        wait_for(lambda: self.get("/ready-check").status_code == 200, timeout=30, what="egress -> mTLS -> bar")

    def get(self, path, session=requests):
        return session.get(f"http://127.0.0.1:{self.ports['egress']}{path}", headers={"Host": "bar"}, timeout=5)

    def admin(self, path):
        return requests.get(f"http://127.0.0.1:{self.ports['admin']}{path}", timeout=5).json()

    def close(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=30)


@pytest.fixture
def sidecar(tmp_path, envoy_bin):
    running = Sidecar(tmp_path, envoy_bin)
    yield running
    running.close()


class Load(threading.Thread):
    """Requests through the egress without pause, on a keep-alive session and on new connections."""

    def __init__(self, sidecar):
        super().__init__(daemon=True)
        self.sidecar, self.stopping, self.sent, self.failed = sidecar, False, 0, []

    def run(self):
        session = requests.Session()
        while not self.stopping:
            for where in (session, requests):
                self.sent += 1
                try:
                    response = self.sidecar.get(f"/load/{self.sent}", where)
                    if response.status_code != 200:
                        self.failed.append(response.status_code)
                except requests.RequestException as exc:
                    self.failed.append(repr(exc))

    def stop(self):
        self.stopping = True
        self.join(timeout=30)


def test_strict_ingress_refuses_plaintext(sidecar):
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{sidecar.ports['ingress']}/", timeout=5)
    assert sidecar.get("/through-mtls").text == "bar GET /through-mtls\n"


def test_a_published_certificate_is_served_without_a_restart_and_no_request_fails(sidecar):
    assert mesh_identity.served(sidecar.ports["admin"]) == {URI: {sidecar.serial}}
    epoch = sidecar.admin("/server_info")["command_line_options"]["restart_epoch"]
    load = Load(sidecar)
    load.start()
    try:
        time.sleep(1)
        # Renewed the way Salt's x509 state writes it: same key, renamed into pki_dir.
        _key, renewed = sidecar.ca.write_identity(sidecar.host["pki_dir"], "bar", URI, key=sidecar.key)
        time.sleep(2)
        assert mesh_identity.served(sidecar.ports["admin"]) == {URI: {sidecar.serial}}, \
            "Envoy took a certificate before the formula published it"
        written = mesh_identity.publish(sidecar.host)
        assert list(written) == ["mesh_bar"]
        assert mesh_identity.confirm_served(sidecar.host, written) == []
        assert mesh_identity.served(sidecar.ports["admin"]) == {URI: {renewed}}
        time.sleep(1)
    finally:
        load.stop()
    assert load.sent > 100 and load.failed == [], (load.sent, load.failed[:5])
    assert sidecar.admin("/server_info")["command_line_options"]["restart_epoch"] == epoch
    stats = {s["name"]: s.get("value") for s in sidecar.admin("/stats?format=json&filter=^sds\\.mesh_bar\\.")["stats"]
             if "name" in s}
    assert stats["sds.mesh_bar.key_rotation_failed"] == 0


def test_confirmation_fails_when_envoy_does_not_serve_what_was_published(sidecar):
    """A certificate Envoy cannot use (another key than the one on disk): Envoy keeps the old
    pair, and the state says so instead of claiming success."""
    sidecar.ca.write_identity(sidecar.host["pki_dir"], "bar", URI, key=sidecar.key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    _key, cert = sidecar.ca.issue(URI, key=other_key)
    crt = f"{sidecar.host['pki_dir']}/bar.crt"
    with open(crt + ".tmp", "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(crt + ".tmp", crt)
    written = mesh_identity.publish(sidecar.host)
    problems = mesh_identity.confirm_served(sidecar.host, written, timeout=3)
    assert problems and "still serves" in problems[0], problems
    assert mesh_identity.served(sidecar.ports["admin"]) == {URI: {sidecar.serial}}
    assert sidecar.get("/still-up").status_code == 200
