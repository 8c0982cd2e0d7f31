"""
What a reader (EDS, ``GET /v1/registration``) sees of one service, and the per-worker cache of it.

The sweep guard: a host that stops checking in expires after the TTL and is hidden, unless so many
of its service's hosts have expired together that it looks like a registration outage rather than
hosts dying; then the service is *held*: every stored host stays visible and the sweeper deletes
nothing, until check-ins resume (the share drops) or an operator forces a sweep. The same rule
applies to the whole fleet: when most of all hosts expired together, every service with expired
hosts is held, single-host services included (their one host expiring alone is an ordinary death
and is cleaned). Reads and the sweeper apply the same rule (``SweepGuard.holds``) to the same
counts, so they agree (the fleet-wide verdict is refreshed with every stamp poll).

The cache keeps, per service, the answer already serialised for EDS and its version (EDS only:
``GET /v1/registration`` shows each host's ``last_check_in`` and reads the store every time). An entry is
dropped when the store stamps the service (any change a reader could see: see ``discovery.store``),
when this worker writes to it, and when its earliest live host is due to expire. Stamps from other
workers and instances are polled every ``check_interval`` seconds; when a poll fails, the cache is
dropped and bypassed until one succeeds (reads then go to the store, and fail like it).
"""

import asyncio
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field

from envoy_formula import discovery_guard

from discovery import eds
from discovery.store import StoreError

log = logging.getLogger("discovery")


@dataclass(frozen=True)
class SweepGuard:
    """Hold a service when more than ``min_hosts`` of its hosts and more than ``fraction`` of them
    have expired at once (``fraction`` 1 turns the guard off: nothing is more than all)."""

    fraction: float = 0.5
    min_hosts: int = 1

    def holds(self, total, expired, fleet_held=False):
        if fleet_held and expired:
            return True
        return discovery_guard.holds(total, expired, self.fraction, self.min_hosts)


@dataclass
class View:
    service: str
    hosts: list                 # what readers see: live hosts, or every stored host when held
    total: int                  # stored hosts (live and expired)
    expired: int
    held: bool
    valid_until: float          # UNIX time the earliest visible live host expires
    epoch: int = 0
    cla_json: bytes = b""       # the ClusterLoadAssignment, serialised once
    version: str = ""
    cla: dict = field(default_factory=dict)


def visible_hosts(stored, since, guard, fleet_held=False, grace=0.0):
    """(visible hosts, held, seconds after ``since`` + ttl until time alone changes the answer,
    expired count) under the sweep guard.

    Held: every stored host. Otherwise the live hosts; and when none is live (every host expired
    yet not held: a single-host service), the expired hosts still within ``grace`` of their expiry,
    so that a service is never emptied by expiry before a fleet-wide outage has had time to show.
    """
    live = [h for h in stored if h.last_check_in >= since]
    expired = len(stored) - len(live)
    held = guard.holds(len(stored), expired, fleet_held)
    if held:
        visible = list(stored)
    elif live:
        visible = live
    else:
        visible = [h for h in stored if h.last_check_in >= since - grace]
    ttl_from_now = min((h.last_check_in - since for h in live), default=math.inf)
    last_hosts = math.inf if held or live else min((h.last_check_in - since + grace for h in visible),
                                                   default=math.inf)
    return visible, held, min(ttl_from_now, last_hosts), expired


def build_view(service, stored, since, ttl, guard, fleet_held=False, grace=0.0):
    visible, held, changes_in, expired = visible_hosts(stored, since, guard, fleet_held, grace)
    valid_until = since + ttl + changes_in
    cla = eds.cluster_load_assignment(service, visible)
    cla_json = json.dumps(cla, sort_keys=True, separators=(",", ":")).encode()
    return View(service, visible, len(stored), expired, held, valid_until, cla=cla, cla_json=cla_json,
                version=hashlib.sha256(cla_json).hexdigest()[:16])


class Views:
    """Per-worker cache of ``View`` objects, kept honest by the store's change stamps."""

    MAX_UNCHECKED = 5.0  # seconds: past this without a good stamp poll the cache is not served

    def __init__(self, store, ttl, guard, check_interval=0.25, clock=time.time, grace=0.0, metrics=None):
        self.store, self.ttl, self.guard, self.clock, self.grace = store, float(ttl), guard, clock, float(grace)
        self.metrics = metrics
        self.check_interval = check_interval
        self.entries = {}
        self.changed = {}           # service -> epoch of its last invalidation
        self.epoch = 0
        self.generation = None      # the store's stamp high-water mark seen by the last poll
        self.last_poll_ok = -math.inf
        self.fleet_held = False     # most of the whole fleet stopped checking in: hold every service
        self.fleet_calm_since = None  # when a fleet-wide hold's share fell back under the threshold
        self.failing = False        # the last stamp poll failed

    def fresh(self):
        """The cache may be served: the last stamp poll succeeded and is not older than
        ``MAX_UNCHECKED`` (a poll that is merely late because this worker is busy does not turn the
        cache off, which would make a busy worker busier; a failing one does at once)."""
        return not self.failing and time.monotonic() - self.last_poll_ok <= max(self.MAX_UNCHECKED,
                                                                                  4 * self.check_interval)

    def invalidate(self, service=None):
        self.epoch += 1
        if service is None:
            self.entries.clear()
        else:
            self.changed[service] = self.epoch

    async def get(self, service):
        now = self.clock()
        entry = self.entries.get(service)
        if (entry is not None and entry.epoch >= self.changed.get(service, 0) and now < entry.valid_until
                and self.fresh()):
            return entry
        epoch = self.epoch
        if self.metrics is not None:
            self.metrics.inc("discovery_view_builds_total")
        view = build_view(service, await self.store.all_hosts(service), now - self.ttl, self.ttl, self.guard,
                          self.fleet_held, self.grace)
        view.epoch = epoch
        if self.fresh():
            self.entries[service] = view
        else:
            self.entries.pop(service, None)
        return view

    async def listed(self, service):
        """The hosts ``GET /v1/registration`` lists: read from the store every time (its answer
        shows ``last_check_in``, which heartbeats change without stamping), guarded like EDS."""
        stored = await self.store.all_hosts(service)
        return visible_hosts(stored, self.clock() - self.ttl, self.guard, self.fleet_held, self.grace)[0]

    def fleet_hold(self, over, now):
        """Whether the fleet-wide hold is on, given whether the share of expired hosts is ``over``
        the threshold now. It is released ``grace`` after the share fell back under it, not at
        once: when check-ins resume after an outage the hosts come back over a heartbeat interval,
        and a service whose hosts are not back yet (a single-host service) would otherwise be
        emptied in between (its hosts expired long ago, so past their own grace)."""
        if over:
            self.fleet_calm_since = None
            return True
        if not self.fleet_held:
            return False
        if self.fleet_calm_since is None:
            self.fleet_calm_since = now
            log.warning("sweep guard: check-ins resumed fleet-wide; the fleet-wide hold ends in %gs unless the "
                        "share of expired hosts rises again", self.grace)
        return now - self.fleet_calm_since < self.grace

    async def poll(self):
        """One stamp poll: drop the entries of services changed since the last one."""
        generation, changed = await self.store.changes(self.generation)
        if changed is None:
            self.invalidate()
        else:
            for service in changed:
                self.invalidate(service)
        self.generation = generation
        now = self.clock()
        total, expired = await self.store.fleet_stats(now - self.ttl)
        fleet_held = self.fleet_hold(self.guard.holds(total, expired), now)
        if fleet_held != self.fleet_held:
            log.warning("sweep guard: %s fleet-wide: %d of %d hosts expired", "holding every service" if fleet_held
                        else "released", expired, total)
            self.fleet_held = fleet_held
            self.invalidate()
        self.last_poll_ok = time.monotonic()

    async def run(self):
        """The poll loop (a task per worker)."""
        while True:
            try:
                await self.poll()
                if self.failing:
                    log.info("change stamps readable again: cache in use")
                self.failing = False
            except StoreError as exc:
                if not self.failing:
                    log.warning("cannot read change stamps (%s): cache bypassed until they are", exc)
                self.failing = True
                self.invalidate()
            await asyncio.sleep(self.check_interval)
