"""
The master's side of authenticated registration: what the ``envoy_discovery`` ext_pillar adds to
each minion's pillar (docs/discovery.md, "Who may register what").

Every minion whose pillar has ``envoy:discovery`` gets ``envoy:discovery:auth:token``: a
registration token for its minion id (which Salt authenticated), the services the network team's
pillar lets it register (``envoy:discovery:auth:services``) and the addresses it may register
(``envoy:discovery:auth:addresses`` when pinned, else the addresses the minion itself reports in
its grains, which servers only accept from that very address). The minions that
``envoy:discovery:server:hosts`` names also get the keys (``envoy:discovery:server:auth_keys``),
to verify tokens. The keys file lives on the master only; no other minion ever sees a key.
"""

import ipaddress

from . import discovery_tokens as tokens
from .errors import EnvoyFormulaError

DAY_S = 86400


def _strings(value, key):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise EnvoyFormulaError(f"pillar {key}={value!r}: expected a list of strings")
    return value


def reported_addresses(grains, register):
    """The non-loopback addresses a minion reports (its ipv4/fqdn_ip4 grains, ipv6 too) plus the
    one pillar sets for its registrations."""
    found = []
    for text in [register.get("ip")] + list(grains.get("ipv4") or []) + list(grains.get("fqdn_ip4") or []) \
            + list(grains.get("ipv6") or []):
        try:
            ip = ipaddress.ip_address(str(text)) if text else None
        except ValueError:
            continue
        if ip is not None and not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast):
            found.append(ip.compressed)
    return sorted(set(found))


def host_token(minion_id, discovery, grains, signing, keys, now, lifetime_s):
    auth = discovery.get("auth") or {}
    services = _strings(auth.get("services"), "envoy:discovery:auth:services")
    pinned = _strings(auth.get("addresses"), "envoy:discovery:auth:addresses")
    if pinned:
        addresses, source = pinned, "pillar"
    else:
        addresses, source = reported_addresses(grains, discovery.get("register") or {}), "grains"
    claims = tokens.host_claims(minion_id, services, addresses, source, tokens.expiry(now, lifetime_s))
    return tokens.issue(signing, keys[signing], claims)


def pillar_for(minion_id, pillar, grains, keys_file, lifetime_days, now):
    """The pillar fragment for ``minion_id`` (empty when its pillar has no ``envoy:discovery``)."""
    discovery = ((pillar or {}).get("envoy") or {}).get("discovery")
    if not isinstance(discovery, dict):
        return {}
    if isinstance(lifetime_days, bool) or not isinstance(lifetime_days, (int, float)) or lifetime_days <= 0:
        raise EnvoyFormulaError(f"ext_pillar envoy_discovery: lifetime_days={lifetime_days!r}: expected days > 0")
    try:
        signing, keys = tokens.read_keys(keys_file)
        with open(keys_file, encoding="utf-8") as handle:
            keys_text = handle.read()
    except (tokens.KeysError, OSError) as exc:
        raise EnvoyFormulaError(f"ext_pillar envoy_discovery: {exc}") from None
    token = host_token(minion_id, discovery, grains or {}, signing, keys, now, lifetime_days * DAY_S)
    out = {"envoy": {"discovery": {"auth": {"token": token}}}}
    if minion_id in ((discovery.get("server") or {}).get("hosts") or []):
        out["envoy"]["discovery"]["server"] = {"auth_keys": keys_text}
    return out


def operator_token(issuer, keys_file, now, lifetime_s=300):
    """A short-lived operator token for the master's runners (expiring hosts, sweeps)."""
    try:
        signing, keys = tokens.read_keys(keys_file)
    except tokens.KeysError as exc:
        raise EnvoyFormulaError(str(exc)) from None
    return tokens.issue(signing, keys[signing], tokens.operator_claims(issuer, now + lifetime_s))
