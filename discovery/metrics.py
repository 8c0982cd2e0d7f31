"""
The service's own counters, rendered in the Prometheus text exposition format (0.0.4).

With several worker processes, every worker counts into its own row of one shared memory block
(an anonymous shared mmap the supervisor creates before forking), and any worker's ``/metrics``
sums the rows: a scrape sees the whole instance whichever worker answers it. A worker writes only
its own row (8-byte aligned doubles: no torn reads), so no lock is needed; a restarted worker
continues its row, so counters never go backwards. Series outside the fixed list below (none
today) stay per worker.
"""

import mmap
from collections import defaultdict

from envoy_formula.discovery_tokens import REASONS as AUTH_REASONS

HELP = {
    "discovery_registrations_total": ("counter", "Registrations (heartbeats included) by result "
                                      "(forbidden: refused by --auth enforce)."),
    "discovery_deregistrations_total": ("counter", "Hosts removed through DELETE."),
    "discovery_eds_requests_total": ("counter", "v3 REST EDS requests by result (not_modified: answered 304)."),
    "discovery_sweeps_total": ("counter", "Sweeps of expired hosts run."),
    "discovery_swept_hosts_total": ("counter", "Expired hosts deleted by sweeps."),
    "discovery_sweeps_held_total": ("counter", "Service sweeps held by the sweep guard (nothing deleted)."),
    "discovery_errors_total": ("counter", "Requests failed on the store (503) by operation."),
    "discovery_view_builds_total": ("counter", "EDS answers built from the store (cache misses)."),
    "discovery_early_expiries_total": ("counter", "Hosts given an early expiry by an operator (POST /v1/expire)."),
    "discovery_auth_verified_total": ("counter", "Requests whose registration or operator token checked out."),
    "discovery_auth_refused_total": ("counter", "Requests refused with 403 by --auth enforce, by reason."),
    "discovery_auth_audited_total": ("counter", "Requests --auth audit would have refused (served anyway), "
                                     "by reason."),
    "discovery_hosts": ("gauge", "Live (unexpired) hosts per service."),
    "discovery_held_hosts": ("gauge", "Expired hosts the sweep guard keeps visible, per held service."),
}

OPERATIONS = ("register", "list", "deregister", "eds", "healthcheck", "metrics", "sweep", "sweep_service",
              "expire", "other")
# Every counter series the service has, in a fixed order: its slot in each worker's row.
SERIES = (
    [("discovery_registrations_total", (("result", r),)) for r in ("ok", "rejected", "forbidden")]
    + [("discovery_deregistrations_total", ()), ("discovery_sweeps_total", ()),
       ("discovery_swept_hosts_total", ()), ("discovery_sweeps_held_total", ()),
       ("discovery_view_builds_total", ()), ("discovery_early_expiries_total", ()),
       ("discovery_auth_verified_total", ())]
    + [(name, (("reason", r),)) for name in ("discovery_auth_refused_total", "discovery_auth_audited_total")
       for r in AUTH_REASONS]
    + [("discovery_eds_requests_total", (("result", r),)) for r in ("ok", "not_modified", "rejected")]
    + [("discovery_errors_total", (("operation", op),)) for op in OPERATIONS]
)
SLOTS = {key: index for index, key in enumerate(SERIES)}
# Shown at 0 before the first event.
ALWAYS_SHOWN = ("discovery_deregistrations_total", "discovery_sweeps_total", "discovery_swept_hosts_total",
                "discovery_sweeps_held_total", "discovery_view_builds_total", "discovery_early_expiries_total",
                "discovery_auth_verified_total")


def _labels(labels):
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels)
    return "{" + ",".join(escaped) + "}"


def _number(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def shared_block(workers):
    """Zeroed shared memory for ``workers`` rows; create it before forking."""
    return mmap.mmap(-1, max(1, workers) * len(SERIES) * 8)


class Metrics:
    def __init__(self, block=None, row=0, rows=1):
        self.local = defaultdict(float)
        self.block = memoryview(block).cast("d") if block is not None else None
        self.row, self.rows = row, rows
        for name in ALWAYS_SHOWN:
            self.local.setdefault((name, ()), 0.0)

    def inc(self, name, amount=1, **labels):
        key = (name, tuple(sorted(labels.items())))
        slot = SLOTS.get(key)
        if self.block is not None and slot is not None:
            self.block[self.row * len(SERIES) + slot] += amount
        else:
            self.local[key] += amount

    def _shared(self):
        if self.block is None:
            return {}
        totals = {}
        for key, slot in SLOTS.items():
            value = sum(self.block[row * len(SERIES) + slot] for row in range(self.rows))
            if value or key[0] in ALWAYS_SHOWN:
                totals[key] = value
        return totals

    def samples(self):
        samples = dict(self.local)
        for key, value in self._shared().items():
            samples[key] = samples.get(key, 0.0) + value
        return samples

    def value(self, name, **labels):
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, host_counts, held_hosts=None):
        """Counters plus the ``discovery_hosts`` and ``discovery_held_hosts`` gauges computed from the
        store at scrape time."""
        samples = self.samples()
        for service, count in host_counts.items():
            samples[("discovery_hosts", (("service", service),))] = count
        for service, count in (held_hosts or {}).items():
            samples[("discovery_held_hosts", (("service", service),))] = count
        lines = []
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for (sample, labels), value in sorted(samples.items()):
                if sample == name:
                    lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"

