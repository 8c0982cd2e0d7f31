"""
Registration tokens (``envoy_formula.discovery_tokens``) and what the master issues
(``envoy_formula.discovery_issuer``): pure logic; the server's use of them runs against real
processes in tests/integration/test_discovery_auth.py and on the lab in tests/mesh/.
"""

import json

import pytest
from envoy_formula import discovery_issuer, discovery_tokens
from envoy_formula.errors import EnvoyFormulaError

SECRET = "s" * 40
KEYS = {"k1": SECRET}
NOW = 1_800_000_000


def token(**claims):
    base = discovery_tokens.host_claims("bar1", ["bar"], ["10.0.0.5"], "grains", NOW + 100)
    return discovery_tokens.issue("k1", SECRET, {**base, **claims})


def reason(text, keys=KEYS, now=NOW):
    with pytest.raises(discovery_tokens.TokenError) as exc:
        discovery_tokens.verify(text, keys, now)
    return exc.value.reason


def test_a_good_token_gives_its_claims():
    claims = discovery_tokens.verify(token(), KEYS, NOW)
    assert claims == {"sub": "bar1", "role": "host", "svc": ["bar"], "ips": ["10.0.0.5"], "ipsrc": "grains",
                      "exp": NOW + 100}
    assert discovery_tokens.service_allowed(claims, "bar") and not discovery_tokens.service_allowed(claims, "foo")
    assert discovery_tokens.address_allowed(claims, "10.0.0.5")
    assert discovery_tokens.address_allowed(claims, "::ffff:10.0.0.5")  # a dual-stack socket's view
    assert not discovery_tokens.address_allowed(claims, "10.0.0.6")


def test_every_kind_of_bad_token_has_its_reason():
    good = token()
    prefix, key_id, body, signature = good.split(".")
    other_body = discovery_tokens.issue("k1", SECRET, {**discovery_tokens.read_claims(good), "svc": ["*"]}).split(".")[2]
    assert reason(None) == "missing"
    assert reason("") == "missing"
    assert reason("garbage") == "malformed"
    assert reason(f"{prefix}.{key_id}.{body}") == "malformed"
    assert reason(good.replace("k1", "k9", 1)) == "unknown_key"
    assert reason(f"{prefix}.{key_id}.{other_body}.{signature}") == "bad_signature"  # claims swapped
    assert reason(discovery_tokens.issue("k1", "t" * 40, discovery_tokens.read_claims(good))) == "bad_signature"
    assert reason(good, now=NOW + 101) == "expired"


def test_the_token_never_appears_in_an_error_message():
    good = token()
    for text, keys, now in [(good, KEYS, NOW + 101), (good.replace("k1", "k9", 1), KEYS, NOW),
                            (good[:-2] + "AA", KEYS, NOW)]:
        with pytest.raises(discovery_tokens.TokenError) as exc:
            discovery_tokens.verify(text, keys, now)
        assert good.split(".")[3] not in str(exc.value) and SECRET not in str(exc.value)


def test_patterns_allow_a_family_of_services():
    claims = discovery_tokens.read_claims(token(svc=["bar-*"]))
    assert discovery_tokens.service_allowed(claims, "bar-api")
    assert not discovery_tokens.service_allowed(claims, "bar")


@pytest.mark.parametrize(("text", "message"), [
    ("", "no key"),
    ("k1 short", "shorter than 32"),
    (f"k1 {SECRET}\nk1 {SECRET}", "listed twice"),
    (f"bad id! {SECRET}", "line 1: expected '<key id> <secret>'"),
    (f"k1 {SECRET} extra", "line 1"),
])
def test_bad_keys_files_name_the_line(text, message):
    with pytest.raises(discovery_tokens.KeysError) as exc:
        discovery_tokens.parse_keys(text, "keys")
    assert message in str(exc.value) and SECRET not in str(exc.value)


def test_the_first_key_signs_and_every_key_verifies():
    signing, keys = discovery_tokens.parse_keys(f"# rotation in progress\nk2 {'n' * 40}\nk1 {SECRET}  # retiring\n")
    assert signing == "k2" and set(keys) == {"k1", "k2"}
    assert discovery_tokens.verify(token(), keys, NOW)["sub"] == "bar1"  # signed with the old key


def test_the_expiry_is_a_window_so_the_token_stays_the_same_within_it():
    day = 86400
    assert discovery_tokens.expiry(30 * day * 100 + 5, 30 * day) == 30 * day * 102
    assert discovery_tokens.expiry(30 * day * 101 - 1, 30 * day) == 30 * day * 102


def issued(tmp_path, pillar, grains=None, minion="bar1", now=NOW):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"k1 {SECRET}\n")
    return discovery_issuer.pillar_for(minion, pillar, grains or {}, str(keys_file), 30, now)


def test_the_master_issues_a_token_from_pillar_and_the_minions_own_addresses(tmp_path):
    pillar = {"envoy": {"discovery": {"auth": {"services": ["bar"]}, "server": {"hosts": ["disc1"]}}}}
    grains = {"ipv4": ["127.0.0.1", "10.0.0.5"], "fqdn_ip4": ["10.0.0.5"], "ipv6": ["::1", "fe80::1"]}
    out = issued(tmp_path, pillar, grains)
    claims = discovery_tokens.verify(out["envoy"]["discovery"]["auth"]["token"], KEYS, NOW)
    assert (claims["sub"], claims["svc"], claims["ips"], claims["ipsrc"]) == ("bar1", ["bar"], ["10.0.0.5"], "grains")
    assert "server" not in out["envoy"]["discovery"]  # only servers get the keys
    # The same inputs a minute later: the same token (a highstate writes nothing new).
    assert issued(tmp_path, pillar, grains, now=NOW + 60) == out
    server = issued(tmp_path, pillar, grains, minion="disc1")
    assert server["envoy"]["discovery"]["server"]["auth_keys"] == f"k1 {SECRET}\n"


def test_pinned_addresses_replace_the_reported_ones(tmp_path):
    pillar = {"envoy": {"discovery": {"auth": {"services": ["bar"], "addresses": ["192.0.2.7"]}}}}
    out = issued(tmp_path, pillar, {"ipv4": ["10.0.0.5"]})
    claims = discovery_tokens.read_claims(out["envoy"]["discovery"]["auth"]["token"])
    assert (claims["ips"], claims["ipsrc"]) == (["192.0.2.7"], "pillar")


def test_no_discovery_pillar_no_token_and_bad_input_is_named(tmp_path):
    assert issued(tmp_path, {"envoy": {"roles": ["sidecar"]}}) == {}
    with pytest.raises(EnvoyFormulaError, match="envoy:discovery:auth:services='bar': expected a list"):
        issued(tmp_path, {"envoy": {"discovery": {"auth": {"services": "bar"}}}})
    with pytest.raises(EnvoyFormulaError, match="cannot read the keys file"):
        discovery_issuer.pillar_for("bar1", {"envoy": {"discovery": {}}}, {}, str(tmp_path / "none"), 30, NOW)


def test_operator_tokens_are_short_lived_and_cannot_register(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"k1 {SECRET}\n")
    claims = discovery_tokens.verify(discovery_issuer.operator_token("master", str(keys_file), NOW), KEYS, NOW)
    assert (claims["role"], claims["exp"], claims["svc"]) == ("operator", NOW + 300, [])
    assert json.dumps(claims).find(SECRET) == -1
