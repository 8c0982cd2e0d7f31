"""
Mesh TLS managed by Salt on the lab (issue 14, docs/mesh-tls.md): the ``discovery`` minion is the
mesh CA (``envoy.identity.ca``); every host gets a key and a certificate per identity from
Salt's x509 states, signed by the CA minion through the master; Envoy reads them through SDS files.

The mesh starts with mesh TLS off, and the tests run in file order on it: a dry run of switching
it on, the migration to strict under load, then what strict guarantees (who gets in, allow
lists), then a certificate that is about to expire, renewed by the host's own scheduled
highstate under load. Load comes from the
lab network into the edge (edge -> foo -> bar), so a request failing on any hop is counted.
Needs root (the lab).
"""

import re

import pytest

from tests.helpers.lab import LAB
from tests.helpers.mesh_tls import (
    BARS,
    INGRESS,
    TRUST_DOMAIN,
    MeshTLS,
    migrate,
    renew_expiring,
    spiffe,
)
from tests.helpers.net import wait_for

OUTCOMES = {}
# Scheduled highstate every minute: rarely in the way of the tests' own, soon enough to renew.
QUIET_SCHEDULE = {"envoy": {"schedule": {"seconds": 60}}}


@pytest.fixture(scope="module")
def mesh(lab_available, tmp_path_factory, built_bundle):
    with MeshTLS(tmp_path_factory.mktemp("mesh-tls"), built_bundle, mode="off",
                 pillar_overrides=QUIET_SCHEDULE) as running:
        print(f"mesh up: {running.timings}")
        yield running


@pytest.fixture
def strict(mesh):
    """The mesh in mode strict (the migration test leaves it so; converge it if that test failed)."""
    if mesh.mesh_tls["envoy"]["mesh_tls"]["mode"] != "strict":
        mesh.set_mesh_tls(mode="strict")
        mesh.converge_hosts()
    mesh.wait_path_ready()
    return mesh


def test_a_dry_run_of_switching_mesh_tls_on_predicts_the_change_and_writes_nothing(mesh):
    """``state.highstate test=True`` with mode permissive in pillar on a host that has no key
    yet: the x509 states, the SDS files and the config say they would change; nothing fails."""
    mesh.wait_path_ready()
    mesh.set_mesh_tls(mode="permissive")
    try:
        data = mesh.salt("bar1", "state.highstate", "test=True", "queue=True")["bar1"]
    finally:
        mesh.set_mesh_tls(mode="off")
    states = {s.get("__id__", key): s for key, s in data.items()}
    failed = {sid: s.get("comment") for sid, s in states.items() if s.get("result") is False}
    assert not failed, failed
    for sid in ("envoy-identity-bar-key-managed", "envoy-identity-bar-certificate-managed",
                "envoy-identity-secrets-published", "envoy-config-file-managed"):
        assert states[sid]["result"] is None, (sid, states[sid])
    assert "would" in states["envoy-config-file-managed"]["comment"]
    assert not mesh.lab.path("bar1", "/etc/envoy/pki/bar.key").exists()
    assert mesh.certs("bar1") == {}


def test_migration_from_plaintext_to_strict_under_load_fails_nothing(mesh):
    """off -> permissive (every ingress takes mTLS too) -> callers send mTLS -> strict (mTLS only),
    each step a pillar edit applied by highstate, host by host, while 200 req/s cross the mesh."""
    mesh.wait_path_ready()
    assert mesh.certs("bar1") == {}, "mesh TLS is off: no certificate yet"
    out = migrate(mesh)
    OUTCOMES["migration"] = out
    print({k: v for k, v in out.items() if k != "load"})
    assert out["failed"]["count"] == 0, out["failed"]
    assert set(out["egress_flags"]) == {"-"}, f"foo's calls to bar that failed a try: {out['egress_flags']}"
    # Strict now: every sidecar presents its service's identity, the edge its own.
    for host, identity in (("bar1", "bar"), ("bar2", "bar"), ("foo", "foo"), ("edge", "edge")):
        assert set(mesh.certs(host)) == {spiffe(identity)}, (host, mesh.certs(host))
    # foo's calls to bar went over mTLS, and bar's ingress saw foo's identity.
    assert mesh.stat("foo", "cluster.bar.ssl.handshake") > 0
    assert any(f" peer={spiffe('foo')} " in line for line in mesh.access_log("bar1")[-50:])


def test_a_host_without_a_mesh_certificate_is_refused(strict):
    mesh = strict
    url = mesh.ingress_url("bar1", "/anything")
    # Plaintext HTTP: the strict ingress only speaks TLS.
    no_chain_before = mesh.stat("bar1", f"listener.0.0.0.0_{INGRESS['bar1']}.no_filter_chain_match")
    code, status, _ = mesh.curl(LAB, url.replace("https://", "http://"))
    assert status == 0 and code != 0, (code, status)
    assert mesh.stat("bar1", f"listener.0.0.0.0_{INGRESS['bar1']}.no_filter_chain_match") == no_chain_before + 1
    # TLS without a client certificate.
    no_cert_before = mesh.stat("bar1", f"listener.0.0.0.0_{INGRESS['bar1']}.ssl.fail_verify_no_cert")
    code, status, _ = mesh.curl(LAB, url, "-k")
    assert status == 0 and code != 0, (code, status)
    assert mesh.stat("bar1", f"listener.0.0.0.0_{INGRESS['bar1']}.ssl.fail_verify_no_cert") == no_cert_before + 1
    # An impostor: a self-signed certificate claiming foo's identity (an allowed caller of bar).
    key, cert = mesh.workdir / "impostor.key", mesh.workdir / "impostor.crt"
    mesh.lab.run(LAB, ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                       "-subj", "/CN=foo", "-addext", f"subjectAltName=URI:{spiffe('foo')}", "-days", "1",
                       "-keyout", str(key), "-out", str(cert)])
    verify_before = mesh.stat("bar1", f"listener.0.0.0.0_{INGRESS['bar1']}.ssl.fail_verify_error")
    code, status, _ = mesh.curl(LAB, url, "-k", "--cert", str(cert), "--key", str(key))
    assert status == 0 and code != 0, (code, status)
    assert mesh.stat("bar1", f"listener.0.0.0.0_{INGRESS['bar1']}.ssl.fail_verify_error") == verify_before + 1
    # And a real mesh certificate gets in (foo's, an allowed caller): the refusals were about the certificate.
    code, status, _ = mesh.curl("foo", url, "-k", "--cert", "/etc/envoy/pki/foo.crt", "--key", "/etc/envoy/pki/foo.key")
    assert status == 200, (code, status)


def test_allowed_calls_work_and_each_hop_sees_its_callers_identity(strict):
    mesh = strict
    path = "/foo/allowed-identity"
    status, body, _ = mesh.get_via_edge(path)
    assert status == 200, (status, body)

    def hop_lines():
        foo = [line for line in mesh.access_log("foo") if f" {path} " in line and " route=local_foo " in line]
        bars = [line for bar in BARS for line in mesh.access_log(bar) if f" {path} " in line]
        return (foo, bars) if foo and bars else None

    foo, bars = wait_for(hop_lines, timeout=15, interval=0.2, what=f"access log lines of {path}")
    assert f" peer={spiffe('edge')} " in foo[0], foo
    assert f" peer={spiffe('foo')} " in bars[0], bars


def test_a_caller_not_on_the_allow_list_gets_403_with_a_stat_and_a_log_line(strict):
    """bar holds a real mesh certificate, but foo lets only the edge call it."""
    mesh = strict
    denied_before = mesh.stat("foo", "http.ingress_foo.rbac.denied")
    code, status, _ = mesh.curl("bar1", mesh.ingress_url("foo", "/foo/from-bar"), "-k",
                                "--cert", "/etc/envoy/pki/bar.crt", "--key", "/etc/envoy/pki/bar.key")
    assert status == 403, (code, status)
    assert mesh.stat("foo", "http.ingress_foo.rbac.denied") == denied_before + 1
    line = wait_for(lambda: mesh.log_lines("foo", " /foo/from-bar ", " 403 "), timeout=10, interval=0.2,
                    what="foo's access log line of the refused call")[0]
    assert f" peer={spiffe('bar')} " in line and " details=rbac_access_denied" in line, line
    assert " attempts=0 " in line, f"the app was reached: {line}"


def test_an_allow_list_edit_refuses_a_caller_live_and_gives_it_back(strict):
    """Pillar: bar may be called by the edge only. foo's calls then get 403 at bar's Envoy;
    restored, they work again: allow lists are a pillar edit, applied without a restart."""
    mesh = strict
    epochs = {bar: mesh.restart_epoch(bar) for bar in BARS}
    denied_before = sum(mesh.stat(bar, "http.ingress_bar.rbac.denied") for bar in BARS)
    try:
        mesh.set_mesh_tls(mode="strict", callers={"foo": ["edge"], "bar": ["edge"]})
        mesh.converge_hosts(BARS)
        status, body, _ = mesh.get_via_edge("/foo/after-edit")
        assert status == 403, (status, body)
        assert sum(mesh.stat(bar, "http.ingress_bar.rbac.denied") for bar in BARS) > denied_before
    finally:
        mesh.set_mesh_tls(mode="strict")
        mesh.converge_hosts(BARS)
    mesh.wait_path_ready()
    assert mesh.get_via_edge("/foo/restored")[0] == 200
    assert {bar: mesh.restart_epoch(bar) for bar in BARS} == epochs, "the allow list edit restarted Envoy"


def test_an_expiring_certificate_is_renewed_by_highstate_under_load(strict):
    mesh = strict
    out = renew_expiring(mesh, "bar1", "bar")
    OUTCOMES["renewal"] = out
    print({k: v for k, v in out.items() if k not in ("load", "status", "status_short")})
    first, short, renewed = out["serials"]
    assert len({first, short, renewed}) == 3, out["serials"]
    # While the short-lived certificate was served, envoy.status said so.
    assert "renewal overdue" in out["status_short"]["summary"], out["status_short"]["summary"]
    certificates = out["status"]["certificates"]
    bar = certificates["identities"]["bar"]
    assert bar["uri"] == spiffe("bar") and bar["served"] is True and int(bar["serial"], 16) == renewed, bar
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", certificates["earliest_expiry"]), certificates
    assert bar["not_after"] > out["short_until"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "renewal overdue" not in out["status"]["summary"]


def test_certificate_rotation_under_load_loses_no_request_and_restarts_nothing(strict):
    out = OUTCOMES.get("renewal")
    if out is None:
        pytest.skip("the renewal test did not run")
    assert out["epochs"][0] == out["epochs"][1], f"Envoy restarted: epochs {out['epochs']}"
    assert out["failed"]["count"] == 0, out["failed"]
    assert set(out["egress_flags"]) == {"-"}, out["egress_flags"]


def test_private_keys_never_reach_state_output_or_logs(strict):
    mesh = strict
    states = mesh.highstate_queued(["foo"])["foo"]
    assert "PRIVATE KEY" not in repr(states)
    for host in ("discovery", "edge", "foo", "bar1", "bar2"):
        for path in ("/var/log/salt/minion", "/var/log/envoy/access.log"):
            assert "PRIVATE KEY" not in mesh.read(host, path), f"{host}:{path}"
    assert "PRIVATE KEY" not in mesh.read("master", "/var/log/salt/master")
    mode = mesh.lab.run("foo", ["stat", "-c", "%a %U %G", "/etc/envoy/pki/foo.key"]).stdout.split()
    assert mode == ["640", "root", "envoy"], mode


def test_envoy_status_reports_each_identity_and_the_earliest_expiry(strict):
    mesh = strict
    certificates = mesh.status("edge")["certificates"]
    assert set(certificates["identities"]) == {"edge"}
    edge = certificates["identities"]["edge"]
    assert edge["uri"] == f"spiffe://{TRUST_DOMAIN}/edge" and edge["served"] is True
    assert certificates["earliest_expiry"] == min(edge["not_after"], certificates["ca"]["not_after"])


def test_the_fleet_report_shows_each_hosts_earliest_certificate_expiry(strict):
    """salt-run envoy.report (asking the minions now) carries what envoy.status says, per host, and
    the table gains the cert_expiry column."""
    mesh = strict
    mesh.salt_run("saltutil.sync_all")  # the runner, to the master
    rows = {row["minion"]: row for row in mesh.salt_run("envoy.report", "live=True")}
    for host in ("edge", "foo", "bar1"):
        expected = mesh.status(host)["certificates"]["earliest_expiry"]
        assert expected and rows[host]["certificates"]["earliest_expiry"] == expected, (host, rows[host])
        assert rows[host]["certificates"]["expires_in_s"] > 0
    table = mesh.salt_run("envoy.report", "live=True", out="table")
    assert "cert_expiry" in table, table[-3000:]
