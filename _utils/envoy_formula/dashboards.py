"""
Grafana dashboards from the manifests (``salt-run envoy.dashboards``): one for the edge and one per
service, each panel a PromQL query over what Envoy's stats listener exposes (``/stats/prometheus``)
and the labels the fleet's scrape config gives every target (``prometheus_config``: ``host``,
``envoy_roles``, ``envoy_services``). The dashboard model is Grafana's own Foundation SDK
(PyPI ``grafana-foundation-sdk``), needed on the master only; nothing here runs on minions.

Per service: requests per second, p50/p99 latency and 5xx at its ingress; per upstream it calls:
requests, failures (5xx, connect failures, timeouts) and p99; circuit-breaker overflows, outlier
ejections; and each host's hot restart epoch. The edge: the same over its front listeners and
every cluster it routes to.
"""

import json

from .errors import EnvoyFormulaError

RATE = "$__rate_interval"  # Grafana's: at least four scrape intervals
DATASOURCE = "${datasource}"
HOST = 'host=~"$host"'
# Clusters that are not upstreams: the local app behind an ingress, the admin API behind the
# stats listener, the discovery service and the trace collector.
NOT_UPSTREAMS = "local_.*|envoy_admin|discovery|zipkin"


def _sdk():
    try:
        from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import dashboard as model
    except ImportError as exc:
        raise EnvoyFormulaError("salt-run envoy.dashboards needs grafana-foundation-sdk on the master: "
                                "salt-pip install grafana-foundation-sdk (or pip install 'envoy-formula[master]')"
                                ) from exc
    return dashboard, prometheus, timeseries, JSONEncoder, model


def in_set(label, value):
    """Matches a ``,a,b,`` list label that contains ``value``."""
    return f'{label}=~".*,{value},.*"'


def selector(*matchers):
    return "{" + ",".join(m for m in matchers if m) + "}"


def ingress_queries(listeners, scope):
    """{panel title: (unit, [(legend, expr)])} for downstream traffic on ``listeners`` (a regex of
    HTTP connection manager prefixes)."""
    sel = selector(scope, HOST, f'envoy_http_conn_manager_prefix=~"{listeners}"')
    sel5 = selector(scope, HOST, f'envoy_http_conn_manager_prefix=~"{listeners}"', 'envoy_response_code_class="5"')
    buckets = f"sum by (le) (rate(envoy_http_downstream_rq_time_bucket{sel}[{RATE}]))"
    return {
        "Requests per second": ("reqps", [("requests", f"sum(rate(envoy_http_downstream_rq_total{sel}[{RATE}]))")]),
        "Latency p50 / p99": ("ms", [("p50", f"histogram_quantile(0.5, {buckets})"),
                                     ("p99", f"histogram_quantile(0.99, {buckets})")]),
        "5xx per second": ("reqps", [("5xx", f"sum(rate(envoy_http_downstream_rq_xx{sel5}[{RATE}]))")]),
    }


def upstream_queries(clusters, scope):
    """Per-upstream panels for the clusters a regex matches (``clusters``: a label matcher)."""
    sel = selector(scope, HOST, clusters)
    by = "sum by (envoy_cluster_name)"

    def per_cluster(metric, func="rate"):
        return f"{by} ({func}({metric}{sel}[{RATE}]))"

    sel5 = selector(scope, HOST, clusters, 'envoy_response_code_class="5"')
    return {
        "Upstream requests per second": ("reqps", [("{{envoy_cluster_name}}",
                                                    per_cluster("envoy_cluster_upstream_rq_total"))]),
        "Upstream failures per second": ("reqps", [
            ("{{envoy_cluster_name}} 5xx", f"{by} (rate(envoy_cluster_upstream_rq_xx{sel5}[{RATE}]))"),
            ("{{envoy_cluster_name}} connect failures", per_cluster("envoy_cluster_upstream_cx_connect_fail")),
            ("{{envoy_cluster_name}} timeouts", per_cluster("envoy_cluster_upstream_rq_timeout"))]),
        "Upstream latency p99": ("ms", [("{{envoy_cluster_name}}", "histogram_quantile(0.99, sum by "
                                         f"(envoy_cluster_name, le) (rate(envoy_cluster_upstream_rq_time_bucket{sel}"
                                         f"[{RATE}])))")]),
        "Circuit breaker overflows": ("short", [
            ("{{envoy_cluster_name}} connections", per_cluster("envoy_cluster_upstream_cx_overflow", "increase")),
            ("{{envoy_cluster_name}} pending", per_cluster("envoy_cluster_upstream_rq_pending_overflow", "increase")),
            ("{{envoy_cluster_name}} retries", per_cluster("envoy_cluster_upstream_rq_retry_overflow", "increase"))]),
        "Outlier ejections": ("short", [("{{envoy_cluster_name}}", per_cluster(
            "envoy_cluster_outlier_detection_ejections_enforced_total", "increase"))]),
    }


def epoch_queries(scope):
    return {"Hot restart epoch": ("short", [("{{host}}", f"max by (host) (envoy_server_hot_restart_epoch"
                                                         f"{selector(scope, HOST)})")])}


def service_panels(service, manifest):
    """The panels of one service's dashboard: {title: (unit, [(legend, expr)])}. ``manifest``:
    ``{ingress: bool, upstreams: [names]}``, merged over the service's hosts."""
    scope = in_set("envoy_services", service)
    panels = {}
    if manifest.get("ingress"):
        panels.update(ingress_queries(f"ingress_{service}", scope))
    if manifest.get("upstreams"):
        names = "|".join(sorted(manifest["upstreams"]))
        panels.update(upstream_queries(f'envoy_cluster_name=~"{names}"', scope))
    panels.update(epoch_queries(scope))
    return panels


def edge_panels():
    scope = in_set("envoy_roles", "front")
    return {**ingress_queries("front_http|front_https", scope),
            **upstream_queries(f'envoy_cluster_name!~"{NOT_UPSTREAMS}"', scope), **epoch_queries(scope)}


def build(uid, title, panels, tags):
    """The dashboard as Grafana's JSON model (a dict), through the Foundation SDK."""
    dashboard, prometheus, timeseries, encoder, model = _sdk()
    source = model.DataSourceRef(type_val="prometheus", uid=DATASOURCE)
    board = (dashboard.Dashboard(title).uid(uid).tags(["envoy", *tags]).refresh("30s").time("now-1h", "now")
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             .with_variable(dashboard.QueryVariable("host").label("host").datasource(source)
                            .query("label_values(envoy_server_hot_restart_epoch, host)")
                            .multi(True).include_all(True).all_value(".*")
                            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)))
    for title_text, (unit, queries) in panels.items():
        panel = timeseries.Panel().title(title_text).unit(unit).datasource(source).height(8).span(12)
        for ref, (legend, expr) in zip("ABCDEFGH", queries, strict=False):
            panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=encoder))


def services_from(entries):
    """{service: {ingress, upstreams}} merged over every host's manifests (mine entries)."""
    out = {}
    for entry in entries.values():
        if not isinstance(entry, dict):
            continue
        for manifest in ((entry.get("manifests") or {}).get("services")) or []:
            item = out.setdefault(manifest["service"], {"ingress": False, "upstreams": set()})
            item["ingress"] = item["ingress"] or bool(manifest.get("ingress"))
            item["upstreams"].update(manifest.get("upstreams") or [])
    return {name: {"ingress": v["ingress"], "upstreams": sorted(v["upstreams"])} for name, v in sorted(out.items())}


def has_edge(entries):
    return any("front" in (entry.get("roles") or []) for entry in entries.values() if isinstance(entry, dict))


def all_dashboards(entries):
    """{file name: dashboard JSON model}: ``envoy-edge.json`` when a host has the front role, and
    ``envoy-service-<name>.json`` per service with a manifest somewhere in the fleet."""
    out = {}
    if has_edge(entries):
        out["envoy-edge.json"] = build("envoy-edge", "Envoy: edge", edge_panels(), ["edge"])
    for name, manifest in services_from(entries).items():
        out[f"envoy-service-{name}.json"] = build(f"envoy-service-{name}", f"Envoy: {name}",
                                                  service_panels(name, manifest), ["service", name])
    return out


def queries(board):
    """[(panel title, expr)] of a dashboard model: what each panel asks Prometheus."""
    return [(panel["title"], target["expr"]) for panel in board.get("panels", [])
            for target in panel.get("targets", [])]
