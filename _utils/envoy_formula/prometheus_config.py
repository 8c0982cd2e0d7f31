"""
Prometheus's scrape config for the fleet (``salt-run envoy.prometheus_config``), from the scrape
address each host publishes in its mine entry (its stats listener, pillar
``envoy:listeners:stats``). Every target carries the labels the generated dashboards select on:
``host`` (the minion id), ``envoy_roles`` and ``envoy_services`` (``,a,b,`` lists, so one regex
matches a member). Also as target groups for ``file_sd_configs``, which Prometheus re-reads
without a restart when the fleet changes.
"""

JOB = "envoy"
METRICS_PATH = "/stats/prometheus"


def _members(values):
    return "," + ",".join(sorted(set(values))) + ","


def target_groups(entries):
    """(target groups, minions without a stats listener), both sorted by minion."""
    groups, missing = [], []
    for minion, entry in sorted(entries.items()):
        scrape = entry.get("scrape") if isinstance(entry, dict) else None
        if not isinstance(scrape, dict) or not scrape.get("address"):
            missing.append(minion)
            continue
        services = [m["service"] for m in ((entry.get("manifests") or {}).get("services") or [])]
        groups.append({"targets": [f"{scrape['address']}:{scrape['port']}"],
                       "labels": {"host": minion, "envoy_roles": _members(entry.get("roles") or []),
                                  "envoy_services": _members(services)}})
    return groups, missing


def scrape_config(groups, scrape_interval="15s", job=JOB):
    """One scrape job over ``groups`` (what ``scrape_configs`` in prometheus.yml lists)."""
    return {"job_name": job, "metrics_path": METRICS_PATH, "scrape_interval": scrape_interval,
            "static_configs": groups}


def prometheus_yml(groups, scrape_interval="15s", job=JOB):
    """A whole prometheus.yml scraping the fleet."""
    return {"global": {"scrape_interval": scrape_interval},
            "scrape_configs": [scrape_config(groups, scrape_interval, job)]}
