"""
``envoy_formula.mesh_identity`` and mesh TLS settings: which identities a host holds, the SDS
files Envoy reads them through (written only when what they name changed), expiry for
``envoy.status``, the CA taken from the mine. Envoy itself: tests/integration/test_mesh_tls_sds.py
and the lab (tests/mesh/test_mesh_tls.py).
"""

import os
import stat

import pytest
import yaml
from envoy_formula import host_settings, mesh_identity
from envoy_formula.errors import EnvoyFormulaError

from tests.helpers.pki import TestCA

MESH = {"mode": "strict", "trust_domain": "mesh.test", "ca": {"minion": "ca1"}}


@pytest.fixture
def host(tmp_path):
    pillar = {"roles": ["sidecar", "front"], "mesh_tls": MESH, "lookup": {"root": str(tmp_path)}}
    host = host_settings.resolve(pillar, euid=1000)
    os.makedirs(host["manifest_dir"])
    os.makedirs(host["pki_dir"] + "/sds")
    for service in ("foo", "bar"):
        with open(f"{host['manifest_dir']}/{service}.yaml", "w") as handle:
            handle.write(f"service: {service}\ningress: {{port: 9{len(service)}11, app_port: 8081}}\n")
    return host


@pytest.fixture
def ca(host):
    ca = TestCA()
    with open(host["pki_dir"] + "/mesh-ca.crt", "w") as handle:
        handle.write(ca.pem())
    return ca


def issue_all(host, ca):
    return {entry["identity"]: ca.write_identity(host["pki_dir"], entry["identity"], entry["uri"])
            for entry in mesh_identity.identities(host)}


def test_a_host_holds_the_edge_identity_and_one_per_service(host):
    entries = mesh_identity.identities(host)
    assert [e["identity"] for e in entries] == ["edge", "bar", "foo"]
    edge, bar = entries[0], entries[1]
    assert edge["uri"] == "spiffe://mesh.test/edge" and bar["uri"] == "spiffe://mesh.test/service/bar"
    assert bar["key"] == host["pki_dir"] + "/bar.key" and bar["sds"] == host["pki_dir"] + "/sds/mesh_bar.yaml"
    assert bar["signing_policy"] == "envoy_mesh"


def test_one_signing_policy_per_identity(host):
    host["mesh_tls"]["ca"]["signing_policy"] = "mesh_{identity}"
    assert [e["signing_policy"] for e in mesh_identity.identities(host)] == ["mesh_edge", "mesh_bar", "mesh_foo"]


def test_no_identity_when_mesh_tls_is_off(host):
    host["mesh_tls"]["mode"] = "off"
    assert mesh_identity.identities(host) == []
    assert mesh_identity.certificates(host) is None


def test_a_manifest_service_that_is_no_file_name_gets_no_identity(host):
    with open(host["manifest_dir"] + "/evil.yaml", "w") as handle:
        handle.write("service: ../../etc/passwd\n")
    with pytest.raises(EnvoyFormulaError, match="no mesh identity is issued"):
        mesh_identity.identities(host)


def test_sds_files_name_the_pair_and_are_written_only_when_a_certificate_changed(host, ca):
    issued = issue_all(host, ca)
    written = mesh_identity.publish(host)
    assert set(written) == {"mesh_ca", "mesh_edge", "mesh_bar", "mesh_foo"}
    document = yaml.safe_load(open(host["pki_dir"] + "/sds/mesh_bar.yaml").read())
    (secret,) = document["resources"]
    assert secret["name"] == "mesh_bar"
    assert secret["tls_certificate"] == {
        "certificate_chain": {"filename": host["pki_dir"] + "/bar.crt"},
        "private_key": {"filename": host["pki_dir"] + "/bar.key"},
        "watched_directory": {"path": host["pki_dir"] + "/sds"}}
    assert stat.S_IMODE(os.stat(host["pki_dir"] + "/sds/mesh_bar.yaml").st_mode) == 0o644
    assert "PRIVATE KEY" not in open(host["pki_dir"] + "/sds/mesh_bar.yaml").read()
    assert mesh_identity.stale(host) == {} and mesh_identity.publish(host) == {}
    # Renewed (same key, new certificate): only its SDS file changes, with a new version.
    ca.write_identity(host["pki_dir"], "bar", "spiffe://mesh.test/service/bar", key=issued["bar"][0])
    stale = mesh_identity.stale(host)
    assert list(stale) == ["mesh_bar"] and stale["mesh_bar"] != document["version_info"]
    assert mesh_identity.publish(host) == stale
    assert sorted(os.listdir(host["pki_dir"] + "/sds")) == [
        "mesh_bar.yaml", "mesh_ca.yaml", "mesh_edge.yaml", "mesh_foo.yaml"]  # no temp file left


def test_publishing_needs_every_key_and_certificate(host, ca):
    issue_all(host, ca)
    os.unlink(host["pki_dir"] + "/foo.key")
    with pytest.raises(EnvoyFormulaError, match="foo.key.*x509 states must write it first"):
        mesh_identity.publish(host)
    assert os.listdir(host["pki_dir"] + "/sds") == []


def test_certificates_report_each_expiry_and_the_earliest(host, ca):
    issue_all(host, ca)
    ca.write_identity(host["pki_dir"], "foo", "spiffe://mesh.test/service/foo", hours=5)
    out = mesh_identity.certificates(host, admin_up=False)
    assert set(out["identities"]) == {"edge", "bar", "foo"}
    foo = out["identities"]["foo"]
    assert foo["uri"] == "spiffe://mesh.test/service/foo" and foo["served"] is None
    assert out["earliest_expiry"] == foo["not_after"] and foo["not_after"].endswith("Z")
    assert out["ca"]["not_after"] > foo["not_after"]
    os.unlink(host["pki_dir"] + "/edge.crt")
    out = mesh_identity.certificates(host, admin_up=False)
    assert out["identities"]["edge"]["not_after"] is None and "edge.crt" in out["identities"]["edge"]["error"]


def test_certificates_cover_what_envoy_is_pointed_at_even_when_pillar_in_memory_says_off(host, ca):
    """A minion daemon keeps the pillar it started with until refresh_pillar: after a highstate
    turned mesh TLS on, envoy.status still reports the certificates its SDS files name."""
    issue_all(host, ca)
    mesh_identity.publish(host)
    host["mesh_tls"]["mode"] = "off"
    out = mesh_identity.certificates(host, admin_up=False)
    assert set(out["identities"]) == {"edge", "bar", "foo"}
    assert out["identities"]["bar"]["uri"] == "spiffe://mesh.test/service/bar"
    for name in os.listdir(host["pki_dir"] + "/sds"):
        os.unlink(host["pki_dir"] + "/sds/" + name)
    assert mesh_identity.certificates(host, admin_up=False) is None


def test_the_ca_comes_from_the_mine_and_must_be_a_ca(ca):
    assert mesh_identity.ca_from_mine({"ca1": ca.pem()}, "ca1") == ca.pem()
    with pytest.raises(EnvoyFormulaError, match="apply envoy.identity.ca on ca1 first"):
        mesh_identity.ca_from_mine({}, "ca1")
    _key, leaf = ca.issue("spiffe://mesh.test/service/foo")
    from cryptography.hazmat.primitives import serialization

    with pytest.raises(EnvoyFormulaError, match="not a CA"):
        mesh_identity.ca_from_mine({"ca1": leaf.public_bytes(serialization.Encoding.PEM).decode()}, "ca1")


@pytest.mark.parametrize("mesh_tls, message", [
    ({"mode": "strict", "trust_domain": "mesh.test"}, "envoy:mesh_tls:ca:minion is not set"),
    ({"mode": "permissive", "trust_domain": "Mesh Test", "ca": {"minion": "ca1"}}, "envoy:mesh_tls:trust_domain"),
    ({"mode": "strict", "trust_domain": "m.t", "ca": {"minion": "ca1"}, "days_valid": 7}, "renew_days_remaining=10"),
    ({"mode": "on"}, "envoy:mesh_tls:mode='on'"),
])
def test_settings_refuse_what_the_formula_cannot_work_with(mesh_tls, message):
    with pytest.raises(EnvoyFormulaError, match=message):
        host_settings.resolve({"mesh_tls": mesh_tls}, euid=1000)


def test_a_bare_yaml_off_means_off():
    assert host_settings.resolve(yaml.safe_load("mesh_tls: {mode: off}"), euid=1000)["mesh_tls"]["mode"] == "off"
