"""
ext_pillar ``envoy_discovery``: the registration token of each minion (and, for the discovery
servers, the keys to verify tokens), issued on the master from the authenticated minion id and the
network team's pillar. A thin front end over ``envoy_formula.discovery_issuer``.

Master config (the keys file: ``<key id> <secret>`` per line, the first signs; 0600, root):

.. code-block:: yaml

    ext_pillar:
      - envoy_discovery:
          keys_file: /etc/salt/envoy-discovery.keys   # the default
          lifetime_days: 7                            # tokens live 7-14 days; a highstate renews them

then ``salt-run saltutil.sync_all`` (this module and the library reach the master's extension dirs).
"""

import time

__virtualname__ = "envoy_discovery"
DEFAULT_KEYS_FILE = "/etc/salt/envoy-discovery.keys"


def __virtual__():
    if "envoy_formula.library" in __utils__:
        return __virtualname__
    return (False, "the envoy_formula library (_utils/envoy_formula) is not synced: run salt-run saltutil.sync_all")


def ext_pillar(minion_id, pillar, keys_file=None, lifetime_days=7, **kwargs):
    keys_file = keys_file or (__opts__.get("envoy_discovery") or {}).get("keys_file") or DEFAULT_KEYS_FILE
    lib = __utils__["envoy_formula.library"]()
    return lib.discovery_issuer.pillar_for(minion_id, pillar, __grains__, keys_file, lifetime_days, time.time())
