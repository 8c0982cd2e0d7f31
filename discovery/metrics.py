"""The service's own counters, rendered in the Prometheus text exposition format (0.0.4)."""

from collections import defaultdict

HELP = {
    "discovery_registrations_total": ("counter", "Registrations (heartbeats included) by result."),
    "discovery_deregistrations_total": ("counter", "Hosts removed through DELETE."),
    "discovery_eds_requests_total": ("counter", "v3 REST EDS requests by result."),
    "discovery_sweeps_total": ("counter", "Sweeps of expired hosts run."),
    "discovery_swept_hosts_total": ("counter", "Expired hosts deleted by sweeps."),
    "discovery_errors_total": ("counter", "Requests failed on the store (503) by operation."),
    "discovery_hosts": ("gauge", "Live (unexpired) hosts per service."),
}


def _labels(labels):
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels)
    return "{" + ",".join(escaped) + "}"


def _number(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    def __init__(self):
        self.counters = defaultdict(float)
        # Unlabelled counters start at 0 so a scrape shows them before the first event.
        for name in ("discovery_deregistrations_total", "discovery_sweeps_total", "discovery_swept_hosts_total"):
            self.counters[(name, ())] = 0.0

    def inc(self, name, amount=1, **labels):
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    def value(self, name, **labels):
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, host_counts):
        """Counters plus the ``discovery_hosts`` gauge computed from the store at scrape time."""
        samples = dict(self.counters)
        for service, count in host_counts.items():
            samples[("discovery_hosts", (("service", service),))] = count
        lines = []
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for (sample, labels), value in sorted(samples.items()):
                if sample == name:
                    lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"
