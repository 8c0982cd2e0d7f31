"""
Registration tokens: what a host sends to prove who it is and what it may register
(docs/discovery.md, "Who may register what"). The Salt master issues one per minion (the
``envoy_discovery`` ext_pillar, from the authenticated minion id and the network team's pillar)
and signs it with a key that only the master and the discovery servers hold; the servers verify
it. Standard library only: the master, the minions and the discovery service all import it.

    edt1.<key id>.<claims>.<signature>

``claims`` is base64url (unpadded) canonical JSON, ``signature`` base64url HMAC-SHA256 of
``edt1.<key id>.<claims>`` under that key. Claims:

- ``sub``: the minion id (Salt authenticated it; the master vouches for it);
- ``role``: ``host`` (registers its own services) or ``operator`` (the master's runners);
- ``svc``: the service names (or fnmatch patterns) this minion may register;
- ``ips``: the addresses it may register, and ``ipsrc``: where they came from (``pillar``: the
  network team pinned them; ``grains``: the minion reported them, so they only count together
  with the server's check that the request came from that address);
- ``exp``: UNIX time after which the token is refused.

A keys file holds one ``<key id> <secret>`` per line (``#`` comments); the first signs, every one
listed verifies, so a key is rotated by adding the new one first and removing the old one once
every host has a token signed with the new one.
"""

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import re

PREFIX = "edt1"
ROLES = ("host", "operator")
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MIN_SECRET = 32  # characters; `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'` gives 43
MAX_TOKEN = 8192
REASONS = ("missing", "malformed", "unknown_key", "bad_signature", "expired", "role", "service", "address")


class TokenError(ValueError):
    """A token refused; ``reason`` is one of :data:`REASONS` (the metrics label)."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class KeysError(ValueError):
    """A keys file that cannot be used; the message names the file and the line."""


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret, signed):
    return _b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


def parse_keys(text, source="keys file"):
    """(signing key id, {key id: secret}) from a keys file's text."""
    keys, first = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not KEY_ID.match(parts[0]):
            raise KeysError(f"{source} line {number}: expected '<key id> <secret>' with a key id of letters, "
                            "digits, '_' or '-'")
        key_id, secret = parts
        if len(secret) < MIN_SECRET:
            raise KeysError(f"{source} line {number}: the secret of {key_id} is shorter than {MIN_SECRET} "
                            "characters")
        if key_id in keys:
            raise KeysError(f"{source} line {number}: key id {key_id} listed twice")
        keys[key_id] = secret
        first = first or key_id
    if not keys:
        raise KeysError(f"{source}: no key (one '<key id> <secret>' per line)")
    return first, keys


def read_keys(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_keys(handle.read(), path)
    except OSError as exc:
        raise KeysError(f"{path}: cannot read the keys file ({exc.strerror})") from None


def issue(key_id, secret, claims):
    body = _b64(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    signed = f"{PREFIX}.{key_id}.{body}"
    return f"{signed}.{_sign(secret, signed)}"


def expiry(now, lifetime_s):
    """The end of the validity window after the current one: a token issued any time in a window
    stays the same (a highstate writes nothing new) and lives between one and two lifetimes."""
    return int((now // lifetime_s + 2) * lifetime_s)


def host_claims(minion_id, services, addresses, address_source, exp):
    return {"sub": minion_id, "role": "host", "svc": sorted(set(services)), "ips": sorted(set(addresses)),
            "ipsrc": address_source, "exp": int(exp)}


def operator_claims(issuer, exp):
    return {"sub": issuer, "role": "operator", "svc": [], "ips": [], "ipsrc": "pillar", "exp": int(exp)}


def _split(token):
    if not isinstance(token, str) or not token:
        raise TokenError("missing", "no registration token (Authorization: Bearer <token>)")
    parts = token.split(".")
    if len(token) > MAX_TOKEN or len(parts) != 4 or parts[0] != PREFIX:
        raise TokenError("malformed", f"not a registration token ({PREFIX}.<key id>.<claims>.<signature>)")
    return parts


def read_claims(token):
    """The claims without checking the signature: for a host looking at its own token."""
    _, _, body, _ = _split(token)
    try:
        claims = json.loads(_unb64(body))
    except ValueError:
        raise TokenError("malformed", "the token's claims do not decode") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str) or claims.get("role") not in ROLES \
            or not isinstance(claims.get("exp"), int) or not all(
                isinstance(claims.get(k), list) and all(isinstance(i, str) for i in claims[k]) for k in ("svc", "ips")):
        raise TokenError("malformed", "the token's claims lack sub, role, svc, ips or exp")
    return claims


def verify(token, keys, now):
    """The claims of a genuine, unexpired token signed by one of ``keys`` ({key id: secret})."""
    _, key_id, body, signature = _split(token)
    secret = keys.get(key_id)
    if secret is None:
        raise TokenError("unknown_key", f"the token is signed with key {key_id!r}, which this server does not "
                                        "have (rotated out, or from another fleet)")
    if not hmac.compare_digest(_sign(secret, f"{PREFIX}.{key_id}.{body}"), signature):
        raise TokenError("bad_signature", "the token's signature does not match (forged or altered)")
    claims = read_claims(token)
    if claims["exp"] < now:
        raise TokenError("expired", f"the token of {claims['sub']} expired (its minion has not had a highstate "
                                    "since the master renewed it)")
    return claims


def service_allowed(claims, service):
    return any(fnmatch.fnmatchcase(service, pattern) for pattern in claims["svc"])


def same_address(one, other):
    """Equal addresses, IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) included."""
    def normal(text):
        try:
            ip = ipaddress.ip_address(str(text).split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            return ip.ipv4_mapped
        return ip
    first = normal(one)
    return first is not None and first == normal(other)


def address_allowed(claims, ip):
    return any(same_address(ip, allowed) for allowed in claims["ips"])
