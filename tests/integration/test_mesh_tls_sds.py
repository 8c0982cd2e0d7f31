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
import threading
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy_formula import mesh_identity

from tests.helpers.sidecar_tls import URI, LocalSidecar


@pytest.fixture
def sidecar(tmp_path, envoy_bin):
    running = LocalSidecar(tmp_path, envoy_bin, mode="strict")
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


def test_a_callee_holding_another_identity_is_refused_by_the_caller(tmp_path, envoy_bin):
    """The host behind bar's address presents a mesh certificate for foo: the caller's Envoy
    checks the URI SAN of the service it meant to reach and refuses the connection."""
    impostor = LocalSidecar(tmp_path, envoy_bin, mode="strict", presents="spiffe://mesh.test/service/foo")
    try:
        response = impostor.get("/who-answers")
        assert response.status_code == 503, (response.status_code, response.text)
        stats = impostor.stats("^cluster\\.bar\\.ssl\\.")
        assert stats["cluster.bar.ssl.fail_verify_san"] > 0, stats
        assert not stats.get("cluster.bar.ssl.handshake"), stats
    finally:
        impostor.close()


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
    stats = sidecar.stats("^sds\\.mesh_bar\\.")
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
