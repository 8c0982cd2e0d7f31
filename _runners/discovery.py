"""
Runner ``discovery``: the master's side of discovery cleanup (docs/discovery.md, "Salt presence").
A thin front end over ``envoy_formula.discovery_presence``.

``presence_lost`` expires, in the discovery service, the registrations of minions the master lost;
the formula's reactor runs it on ``salt/presence/change``. Master config:

.. code-block:: yaml

    presence_events: true
    reactor:
      - 'salt/presence/change':
        - salt://envoy/reactor/presence.sls
    envoy_discovery:
      urls: [http://10.0.0.5:8080, http://10.0.0.6:8080]   # the discovery instances
      keys_file: /etc/salt/envoy-discovery.keys            # operator tokens, when the servers check them
      idle_s: 90          # expire only hosts silent this long: more than a heartbeat plus its splay
      guard: 0.5          # nothing is expired when more than this share of the minions is lost at once
      guard_min: 1        # ... and more than this many
"""

import logging
import time

import salt.key

log = logging.getLogger(__name__)

__virtualname__ = "discovery"


def __virtual__():
    if "envoy_formula.library" in __utils__:
        return __virtualname__
    return (False, "the envoy_formula library (_utils/envoy_formula) is not synced: run salt-run saltutil.sync_all")


def _addresses(lib, minions):
    """{minion: the addresses it registers}, from the master's cache of its grains and pillar."""
    grains = __salt__["cache.grains"](tgt=",".join(minions), tgt_type="list") or {}
    pillars = __salt__["cache.pillar"](tgt=",".join(minions), tgt_type="list") or {}
    out = {}
    for minion in minions:
        register = (((pillars.get(minion) or {}).get("envoy") or {}).get("discovery") or {}).get("register") or {}
        out[minion] = lib.discovery_issuer.reported_addresses(grains.get(minion) or {}, register)
    return out


def presence_lost(lost=None, **kwargs):
    """
    Expire the registrations of the minions in ``lost`` (those that have not checked in for
    ``envoy_discovery:idle_s``), unless a large share of the fleet is lost at once.

    CLI Example:

    .. code-block:: bash

        salt-run discovery.presence_lost lost='[bar2]'
    """
    lib = __utils__["envoy_formula.library"]()
    config = lib.discovery_presence.settings(__opts__.get("envoy_discovery"))
    lost = [str(minion) for minion in (lost or [])]
    known = salt.key.get_key(__opts__).list_status("accepted").get("minions", [])
    token = None
    try:
        token = lib.discovery_issuer.operator_token(__opts__.get("id", "master"), config["keys_file"], time.time())
    except lib.errors.EnvoyFormulaError as exc:  # servers with auth off need none
        log.info("discovery.presence_lost: no operator token (%s)", exc)
    reason = f"salt presence: the master lost {', '.join(sorted(lost))}"
    result = lib.discovery_presence.expire_lost(lost, known, _addresses(lib, lost) if lost else {}, config, token,
                                                reason)
    log.warning("discovery.presence_lost: %s", result.get("comment", "nothing lost"))
    return result
