"""
The master's presence cleanup (docs/discovery.md, "Salt presence"): when the master loses minions
(``salt/presence/change`` with ``presence_events: True``), their registrations expire at once
instead of at the end of their TTL, so a dead host leaves every Envoy's EDS within a minute or two
rather than ten.

Two guards keep a master-side glitch from wiping discovery:

- the fleet: when more than ``guard`` (a share) and more than ``guard_min`` of the accepted minions
  are lost at once, that is the master's own outage or restart (a restarted master first sees
  every minion it remembers as lost), not hosts dying: nothing is expired (the sweep guard's rule,
  ``discovery_guard``);
- each host: the discovery service expires a lost host's registration ``idle_s`` seconds after its
  last check-in (rather than a TTL after it), so a host whose minion the master lost but whose
  heartbeat still arrives keeps its registration: each check-in gives it the full TTL again.
  ``idle_s`` must be longer than a heartbeat interval plus its splay. The service's own sweep
  guard then judges the expired hosts like any others.
"""

import json

from . import discovery_guard
from .discovery_registration import Unreachable, first_answer, session_from
from .errors import EnvoyFormulaError

DEFAULTS = {"urls": [], "keys_file": "/etc/salt/envoy-discovery.keys", "idle_s": 90, "guard": 0.5,
            "guard_min": 1, "timeout": 5}


def settings(config):
    """The master config's ``envoy_discovery`` section with defaults, checked."""
    merged = {**DEFAULTS, **{k: v for k, v in (config or {}).items() if v is not None}}
    urls = merged["urls"] if isinstance(merged["urls"], list) else [merged["urls"]]
    if not urls or not all(isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls):
        raise EnvoyFormulaError("master config envoy_discovery:urls: expected the discovery instances' URLs "
                                "(http://host:port, one or a list)")
    merged["urls"] = [url.rstrip("/") for url in urls]
    return merged


def held(lost, known, config):
    return discovery_guard.holds(max(len(known), len(lost)), len(lost), config["guard"], config["guard_min"])


def expire_lost(lost, known, addresses, config, token, reason):
    """``lost``: minion ids; ``known``: every accepted minion id; ``addresses``: {minion: [ips]};
    ``token``: an operator token (or None when the servers do not check). Returns what was done."""
    lost = sorted(set(lost))
    out = {"lost": lost, "known": len(known), "held": False, "expiring": [], "url": None}
    if not lost:
        return out
    if held(lost, known, config):
        out["held"] = True
        out["comment"] = (f"{len(lost)} of {len(known)} minions lost at once: more than "
                          f"{config['guard']:.0%} (and more than {config['guard_min']}) looks like the master's own "
                          "outage or restart; nothing expired, the registrations' TTL decides")
        return out
    ips = sorted({ip for minion in lost for ip in addresses.get(minion) or []})
    if not ips:
        out["comment"] = "no known address for the lost minions (no cached grains): nothing to expire"
        return out
    body = json.dumps({"ips": ips, "idle_for": config["idle_s"], "reason": reason})
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    with session_from(None) as session:
        try:
            url, resp = first_answer(session, "POST", config["urls"], "/v1/expire", float(config["timeout"]),
                                     data=body, headers=headers)
        except Unreachable as exc:
            raise EnvoyFormulaError(f"no discovery instance answered: {exc}") from None
    if resp.status_code != 200:
        raise EnvoyFormulaError(f"{url} refused to expire {', '.join(ips)}: HTTP {resp.status_code} {resp.text[:300]}")
    expiring = resp.json().get("expiring", [])
    out.update(url=url, expiring=expiring, ips=ips,
               comment=f"{len(expiring)} registration(s) of {', '.join(lost)} expire {config['idle_s']}s after "
                       "their last check-in unless they check in again")
    return out
