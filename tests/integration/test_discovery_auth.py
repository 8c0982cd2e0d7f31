"""
Authenticated registration against the real ``envoy-discovery`` (docs/discovery.md, "Who may
register what"). Hosts are loopback addresses (127.0.0.7 is web1, 127.0.0.8 is web2): a request
leaves from the address it registers, as the formula's client sends it, so the server's peer
check sees what it would see on a network. Each forged registration is refused with a 403 that
says why, counted by reason, and stores nothing; ``audit`` serves the same requests and counts
them; keys rotate without a restart; neither tokens nor keys reach the log.
"""

import subprocess
import time

import pytest
import requests
from envoy_formula import discovery_tokens
from envoy_formula.discovery_registration import session_from

from tests.helpers.discovery import DISCOVERY_BIN, DiscoveryService, tags

KEY_1, KEY_2 = "a" * 43, "b" * 43
WEB1, WEB2, STRANGER = "127.0.0.7", "127.0.0.8", "127.0.0.9"


def host_token(minion, services, ips, key=("k1", KEY_1), exp=None, role="host"):
    claims = discovery_tokens.host_claims(minion, services, ips, "grains", exp or time.time() + 3600)
    return discovery_tokens.issue(*key, {**claims, "role": role})


TOKENS = {"web1": host_token("web1", ["users"], [WEB1]), "web2": host_token("web2", ["orders"], [WEB2])}


def keys_file(tmp_path, *lines):
    path = tmp_path / "keys"
    path.write_text("".join(f"{key_id} {secret}\n" for key_id, secret in lines))
    path.chmod(0o600)
    return path


def register(service, url, ip, token=None, source=None):
    form = {"ip": ip, "port": "8081", "revision": "r1", "service_repo_name": service, "tags": tags()}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with session_from(source or ip) as session:
        return session.post(f"{url}/v1/registration/{service}", data=form, headers=headers, timeout=5)


def metric(url, name, **labels):
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def listed(url, service):
    return sorted(h["ip_address"] for h in requests.get(f"{url}/v1/registration/{service}", timeout=5).json()["hosts"])


@pytest.fixture
def keys(tmp_path):
    return keys_file(tmp_path, ("k1", KEY_1))


@pytest.fixture
def enforcing(tmp_path, keys):
    with DiscoveryService(tmp_path, extra_args=["--auth", "enforce", "--auth-keys-file", str(keys)]) as service:
        yield service


FORGERIES = [
    # (what, service, ip, token, sent from, reason)
    ("another host's address", "users", WEB2, TOKENS["web1"], WEB1, "address"),
    ("its own address, sent from elsewhere", "users", WEB1, TOKENS["web1"], STRANGER, "address"),
    ("a stolen token, used from the thief's address", "users", STRANGER, TOKENS["web1"], STRANGER, "address"),
    ("a service not in its manifests or pillar", "orders", WEB1, TOKENS["web1"], WEB1, "service"),
    ("no proof", "users", WEB1, None, WEB1, "missing"),
    ("a token signed with a key the server does not have", "users", WEB1,
     host_token("web1", ["users"], [WEB1], key=("k9", KEY_2)), WEB1, "unknown_key"),
    ("a token signed with a wrong secret", "users", WEB1,
     host_token("web1", ["users"], [WEB1], key=("k1", KEY_2)), WEB1, "bad_signature"),
    ("a token whose claims were edited", "users", WEB1,
     ".".join(TOKENS["web2"].split(".")[:2] + [TOKENS["web1"].split(".")[2], TOKENS["web2"].split(".")[3]]),
     WEB1, "bad_signature"),
    ("an expired token", "users", WEB1, host_token("web1", ["users"], [WEB1], exp=time.time() - 1), WEB1, "expired"),
    ("an operator token", "users", WEB1, host_token("master", ["users"], [WEB1], role="operator"), WEB1, "role"),
    ("not a token at all", "users", WEB1, "let-me-in", WEB1, "malformed"),
]


def test_honest_hosts_register_and_every_forgery_is_refused_counted_and_stores_nothing(enforcing):
    url = enforcing.url
    assert register("users", url, WEB1, TOKENS["web1"]).status_code == 200
    assert register("orders", url, WEB2, TOKENS["web2"]).status_code == 200
    for what, service, ip, token, source, reason in FORGERIES:
        resp = register(service, url, ip, token, source)
        assert resp.status_code == 403, (what, resp.status_code, resp.text)
        body = resp.json()
        assert body["reason"] == reason and body["error"].startswith("registration refused: "), (what, body)
        if token and "." in token:
            assert token.split(".")[3] not in resp.text, what
    assert listed(url, "users") == [WEB1] and listed(url, "orders") == [WEB2]
    for reason in {f[-1] for f in FORGERIES}:
        expected = sum(1 for f in FORGERIES if f[-1] == reason)
        assert metric(url, "discovery_auth_refused_total", reason=reason) == expected, reason
    assert metric(url, "discovery_registrations_total", result="forbidden") == len(FORGERIES)
    assert metric(url, "discovery_registrations_total", result="ok") == 2
    assert metric(url, "discovery_auth_verified_total") == 2
    # What the log says names the host and the reason, never a token or a key.
    log = enforcing.log_tail(100_000)
    assert "minion web1 may not register service orders" in log
    for token in [f[3] for f in FORGERIES if f[3]] + list(TOKENS.values()):
        assert token.split(".")[-1] not in log
    assert KEY_1 not in log and KEY_2 not in log


def test_deregistration_needs_the_same_proof(enforcing):
    url = enforcing.url
    assert register("users", url, WEB1, TOKENS["web1"]).status_code == 200
    with session_from(WEB2) as web2:
        forged = web2.delete(f"{url}/v1/registration/users/{WEB1}:8081", timeout=5,
                             headers={"Authorization": f"Bearer {TOKENS['web2']}"})
    assert forged.status_code == 403 and forged.json()["reason"] == "service"
    assert forged.json()["error"].startswith("deregistration refused: ")
    assert listed(url, "users") == [WEB1]
    with session_from(WEB1) as web1:
        honest = web1.delete(f"{url}/v1/registration/users/{WEB1}:8081", timeout=5,
                             headers={"Authorization": f"Bearer {TOKENS['web1']}"})
    assert honest.status_code == 200 and listed(url, "users") == []


def test_operator_endpoints_are_open_to_the_servers_own_loopback(enforcing):
    # 127.0.0.1 is the server's own host: an operator there may sweep without a token.
    resp = requests.post(f"{enforcing.url}/v1/sweep", timeout=5)
    assert resp.status_code == 200, resp.text


def test_audit_serves_what_enforce_would_refuse_and_counts_it(tmp_path, keys):
    with DiscoveryService(tmp_path, extra_args=["--auth", "audit", "--auth-keys-file", str(keys)]) as audit:
        assert register("users", audit.url, WEB1, TOKENS["web1"]).status_code == 200
        assert register("users", audit.url, WEB2, None).status_code == 200  # no proof: served, counted
        assert register("orders", audit.url, WEB1, TOKENS["web1"]).status_code == 200
        assert listed(audit.url, "users") == [WEB1, WEB2]
        assert metric(audit.url, "discovery_auth_audited_total", reason="missing") == 1
        assert metric(audit.url, "discovery_auth_audited_total", reason="service") == 1
        assert metric(audit.url, "discovery_auth_refused_total", reason="missing") == 0
        assert metric(audit.url, "discovery_auth_verified_total") == 1
        assert "auth audit, accepted anyway: register users" in audit.log_tail()


def test_keys_rotate_without_a_restart(tmp_path, enforcing, keys):
    url, pid = enforcing.url, enforcing.proc.pid
    new_token = host_token("web1", ["users"], [WEB1], key=("k2", KEY_2))
    assert register("users", url, WEB1, new_token).json()["reason"] == "unknown_key"
    keys_file(tmp_path, ("k2", KEY_2), ("k1", KEY_1))  # the new key signs, the old one still verifies
    time.sleep(1.2)  # the server looks at the file at most once a second
    assert register("users", url, WEB1, new_token).status_code == 200
    assert register("users", url, WEB1, TOKENS["web1"]).status_code == 200
    keys_file(tmp_path, ("k2", KEY_2))  # every host has a new token: the old key goes
    time.sleep(1.2)
    assert register("users", url, WEB1, TOKENS["web1"]).json()["reason"] == "unknown_key"
    keys.write_text("garbage\n")  # a broken file keeps the last good keys
    time.sleep(1.2)
    assert register("users", url, WEB1, new_token).status_code == 200
    assert enforcing.alive() and enforcing.proc.pid == pid
    assert "keeping the previous keys" in enforcing.log_tail() and KEY_2 not in enforcing.log_tail(100_000)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read the keys file"), ("k1 short\n", "line 1: the secret of k1 is shorter than 32")])
def test_a_missing_or_broken_keys_file_stops_the_start(tmp_path, content, message):
    path = tmp_path / "keys"
    if content:
        path.write_text(content)
    proc = subprocess.run([DISCOVERY_BIN, "--listen", "127.0.0.1:1", "--auth", "enforce", "--auth-keys-file",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and str(path) in proc.stderr, proc.stderr
