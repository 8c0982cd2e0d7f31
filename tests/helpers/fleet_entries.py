"""
Mine entries shaped like ``envoy.report_summary``'s (tests/integration/test_report_summary.py checks
that shape against a real host), for the pure logic's tests, the HTML page's browser test and the
report benchmark's simulated fleet.
"""

import copy
import datetime

BUNDLE = "1.40.0-2f6c0a9e41d7"
SHA = "5f1c0ad8e3b9" + "0" * 52


def iso(seconds):
    """As the discovery service writes ``last_check_in``: ISO 8601 UTC with milliseconds."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")


def entry(minion, now, age=30.0, live=True, services=(), upstreams=(), roles=("sidecar",), catalogue=("bar", "foo"),
          ingress_delta=5, egress_delta=5, drift=False, interval=70, **extra):
    """One host's summary ``age`` seconds old; ``services``: the manifests on it (each with an
    ingress, calling ``upstreams``)."""
    data = {
        "format": 1, "minion": minion, "collected_at": now - age, "interval_s": interval,
        "roles": list(roles),
        "status": {
            "summary": f"{'LIVE' if live else 'STOPPED'}, epoch 2, bundle {BUNDLE}, config applied",
            "live": live, "running": live, "state": "LIVE" if live else "stopped",
            "epoch": 2 if live else None, "envoy_version": "1.40.0" if live else None,
            "bundle": {"current": BUNDLE, "running": BUNDLE if live else None},
            "config_sha256": {"file": SHA, "running": SHA if live else None},
            "uptime_s": {"current_epoch": 3600 if live else None, "all_epochs": 7200 if live else None},
            "last_restart": {"kind": "hot", "outcome": "success", "error": None,
                             "finished_at": "2026-11-27T07:01:02+00:00", "started_at": "2026-11-27T07:01:00+00:00"},
            "highstate": {"result": True, "finished_at": "2026-11-27T07:15:40+00:00", "failed_count": 0},
            "restart_queued": None,
        },
        "config_age_s": 86400.0,
        "rejected": {"subscriptions": {}, "inputs": None},
        "manifests": {"services": [{"service": s, "file": f"{s}.yaml", "ingress": True, "upstreams": sorted(upstreams)}
                                   for s in services], "problems": []},
        "catalogue": sorted(catalogue),
        "discovery": {"configured": True, "problems": [],
                      "services": [{"service": s, "listed": True, "current": True, "last_check_in": iso(now - 20)}
                                   for s in services]},
        "drift": {"drift": drift, "files": ["envoy.yaml"] if drift else [], "error": None, "checked_at": now - age},
        "traffic": {"listeners": ({**{f"ingress_{s}": {"total": 1000, "delta": ingress_delta} for s in services},
                                   "egress": {"total": 500, "delta": egress_delta}} if live else {}),
                    "over_s": 60.0 if live else None},
        "scrape": {"address": "10.0.0.1", "port": 9902},
    }
    for key, value in extra.items():
        data[key] = value
    return copy.deepcopy(data)


def fleet(count, now, stopped_every=50, services=("foo", "bar", "baz", "qux")):
    """``count`` hosts: every ``stopped_every``-th with its Envoy stopped, services spread round."""
    out = {}
    for index in range(count):
        name = f"host{index:05d}"
        service = services[index % len(services)]
        out[name] = entry(name, now, age=5 + index % 60, live=index % stopped_every != 1, services=[service],
                          upstreams=[s for s in services if s != service][:1])
    return out
