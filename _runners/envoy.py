"""
Runner ``envoy``: the fleet seen from the master, from what every host publishes to the Salt mine
(``envoy.report``, salt/envoy/report): the fleet report, the adoption burndown, Grafana dashboards
and Prometheus's scrape config. A thin front end over the formula's library
(``_utils/envoy_formula``: fleet_report, burndown, report_html, dashboards, prometheus_config),
which the master gets with ``salt-run saltutil.sync_all``.
"""

import json
import logging
import os
import time

log = logging.getLogger(__name__)

__virtualname__ = "envoy"
SUMMARY_FUNCTION = "envoy.report_summary"


def __virtual__():
    if "envoy_formula.library" in __utils__:
        return __virtualname__
    return (False, "the envoy_formula library (_utils/envoy_formula) is not synced to the master: "
                   "run salt-run saltutil.sync_all")


def _lib():
    return __utils__["envoy_formula.library"]()


def _minions(tgt, tgt_type):
    """Every accepted minion the target matches, whether it answers or not."""
    import salt.utils.minions

    return sorted(salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)["minions"])


def _from_mine(tgt, tgt_type):
    return __salt__["mine.get"](tgt, _lib().report_summary.MINE_FUNCTION, tgt_type) or {}


def _ask(tgt, tgt_type, batch, timeout):
    """Each minion's summary, asked now, ``batch`` minions at a time: {minion: summary}."""
    import salt.client

    answers = {}
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        for ret in client.cmd_batch(tgt, SUMMARY_FUNCTION, tgt_type=tgt_type, batch=str(batch), timeout=timeout):
            for minion, data in (ret or {}).items():
                if data not in ({}, None):
                    answers[minion] = data
    return answers


def _collect(tgt, tgt_type, live, batch, timeout):
    """(minions, entries, answered or None, when)."""
    minions = _minions(tgt, tgt_type)
    if live:
        entries = _ask(tgt, tgt_type, batch, timeout)
        return minions, entries, set(entries), time.time()
    return minions, _from_mine(tgt, tgt_type), None, time.time()


def _history_path():
    return os.path.join(__opts__["cachedir"], "envoy_formula", "burndown.sqlite3")


def _fleet(tgt, tgt_type, live, batch, timeout, record):
    lib = _lib()
    minions, entries, answered, now = _collect(tgt, tgt_type, live, batch, timeout)
    rows = lib.fleet_report.rows(minions, entries, now, answered)
    healthy = {r["minion"] for r in rows if r["reporting"] == "ok"}
    services = lib.burndown.classify(entries, healthy)
    if record and services:
        lib.burndown.append(_history_path(), now, services)
    return rows, services, entries, now


def _write(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def _wants_data():
    """``--out=json`` (or yaml): scripts get the structured rows, not the table's strings."""
    return __opts__.get("output") in ("json", "yaml", "pprint", "raw")


def report(tgt="*", tgt_type="glob", format=None, out=None, live=False, batch="10%", timeout=30, record=True):
    """
    One row per minion: health (red, amber, green) and why; Envoy LIVE or not; the row's age (how
    old the host's last report is); bundle and Envoy version; epoch and uptime; the config on disk
    against the one running and its age; the last restart and its error; rejected updates;
    discovery registrations and how fresh; drift (the config on disk against what its inputs
    render); the earliest certificate expiry when hosts report certificates. Minions with no
    report, a stale one (older than three publish intervals) or, with ``live=True``, no answer are
    rows that say so.

    tgt, tgt_type
        which minions (every accepted key the target matches gets a row)
    format
        ``table`` (Salt's table outputter, the default), ``json`` (every field; the default with
        ``--out=json``) or ``html`` (one self-contained page, needs ``out``)
    out
        write to this file instead of printing
    live
        ask the minions now (``envoy.report_summary``) instead of reading the mine, ``batch``
        minions at a time, each batch waiting up to ``timeout`` seconds
    record
        append this run's adoption burndown point to the history (the master's cache dir)

    CLI Example:

    .. code-block:: bash

        salt-run envoy.report
        salt-run envoy.report tgt='web*' --out=json
        salt-run envoy.report format=html out=/srv/www/envoy/index.html
        salt-run envoy.report live=True batch=50
    """
    lib = _lib()
    rows, services, _entries, now = _fleet(tgt, tgt_type, live, batch, timeout, record)
    fmt = format or ("json" if _wants_data() else "table")
    if fmt == "html":
        if not out:
            raise ValueError("format=html writes a page: give out=<file>")
        page = lib.report_html.page(rows, services, lib.burndown.trend(_history_path()), now)
        return {"written": _write(out, page), "hosts": len(rows), "health": lib.fleet_report.counts(rows)}
    if fmt == "json":
        if out:
            return {"written": _write(out, json.dumps(rows, indent=2, sort_keys=True) + "\n"), "hosts": len(rows)}
        return rows
    if fmt != "table":
        raise ValueError(f"format={fmt}: expected table, json or html")
    return _table(lib, rows, out)


def _table(lib, rows, out):
    shown = lib.fleet_report.display_rows(rows)
    counts = lib.fleet_report.counts(rows)
    title = (f"Envoy fleet: {len(rows)} hosts, {counts['red']} red, {counts['amber']} amber, "
             f"{counts['green']} green")
    table = [list(shown[0])] + [list(item.values()) for item in shown] if shown else []
    data = {title: table}
    if out:
        import salt.output

        return {"written": _write(out, salt.output.out_format(data, "table", __opts__) + "\n"), "hosts": len(rows)}
    return {"outputter": "table", "data": data}


def burndown(days=30, record=True, tgt="*", tgt_type="glob"):
    """
    The adoption burndown: every service in the catalogue or in a manifest, and whether it is on
    Envoy yet (``not started``, ``deployed``: its manifest is in place and Envoy LIVE on some host,
    ``in use``: requests went through Envoy there between two samples), with the trend over the
    last ``days`` from the history kept on the master. Takes a new point from the mine first
    (``record``), so a master schedule of this function draws the curve.

    CLI Example:

    .. code-block:: bash

        salt-run envoy.burndown
        salt-run envoy.burndown days=90 --out=json
    """
    lib = _lib()
    _rows, services, _entries, now = _fleet(tgt, tgt_type, False, None, None, record)
    points = lib.burndown.trend(_history_path(), since=now - float(days) * 86400)
    when = lib.report_html.when
    services_table = [["service", "state", "hosts", "deployed", "in use", "ingress rq", "egress rq"]] + [
        [s["service"], s["state"], len(s["hosts"]), len(s["deployed"]), len(s["in_use"]),
         "-" if s["ingress_rq"] is None else s["ingress_rq"], "-" if s["egress_rq"] is None else s["egress_rq"]]
        for s in services]
    trend_table = [["when", *lib.burndown.STATES]] + [[when(p["at"]), *(p[s] for s in lib.burndown.STATES)]
                                                      for p in points]
    if _wants_data():
        return {"services": services, "trend": points}
    return {"outputter": "table", "data": {"1. services now": services_table,
                                           f"2. trend, last {days} days ({len(points)} points)": trend_table}}


def dashboards(out=None, tgt="*", tgt_type="glob"):
    """
    Grafana dashboards generated from the manifests the fleet reports: ``envoy-edge.json`` (front
    hosts) and ``envoy-service-<name>.json`` per service (requests per second, p50/p99 latency,
    5xx, per-upstream requests, failures and p99, circuit-breaker overflows, outlier ejections,
    hot restart epochs), over Prometheus scraping the stats listeners (``prometheus_config``).
    Needs ``grafana-foundation-sdk`` on the master. With ``out``: one JSON file per dashboard in
    that directory; without: the dashboards themselves.

    CLI Example:

    .. code-block:: bash

        salt-run envoy.dashboards out=/var/lib/grafana/dashboards/envoy
    """
    boards = _lib().dashboards.all_dashboards(_from_mine(tgt, tgt_type))
    if not out:
        return boards
    written = {name: _write(os.path.join(out, name), json.dumps(board, indent=2, sort_keys=True) + "\n")
               for name, board in boards.items()}
    return {"written": sorted(written.values())}


def prometheus_config(out=None, file_sd=False, scrape_interval="15s", tgt="*", tgt_type="glob"):
    """
    Prometheus's scrape config for the fleet, from the stats listener address each host reports
    (pillar ``envoy:listeners:stats``): a whole prometheus.yml, or with ``file_sd=True`` the target
    groups for a ``file_sd_configs`` file (Prometheus re-reads it as the fleet changes). Targets
    carry the labels the dashboards select on (host, envoy_roles, envoy_services). Minions without
    a stats listener, or without a report in the mine, are listed under ``without_stats_listener``.

    CLI Example:

    .. code-block:: bash

        salt-run envoy.prometheus_config out=/etc/prometheus/prometheus.yml
        salt-run envoy.prometheus_config file_sd=True out=/etc/prometheus/envoy-targets.json
    """
    import yaml

    config = _lib().prometheus_config
    entries = _from_mine(tgt, tgt_type)
    groups, missing = config.target_groups(entries)
    missing = sorted(set(missing) | (set(_minions(tgt, tgt_type)) - set(entries)))  # no report: no address
    data = groups if file_sd else config.prometheus_yml(groups, scrape_interval)
    if not out:
        return {"config": data, "without_stats_listener": missing}
    text = json.dumps(groups, indent=2) + "\n" if file_sd else yaml.safe_dump(data, sort_keys=False)
    return {"written": _write(out, text), "targets": len(groups), "without_stats_listener": missing}
