"""
Grafana dashboards from the manifests (``envoy_formula.dashboards``, Grafana's Foundation SDK) and
the scrape config (``envoy_formula.prometheus_config``): which dashboards, which panels, what each
panel asks Prometheus, and the labels the queries select on. (tests/mesh/test_fleet_view.py runs
every query against a real Prometheus scraping real Envoys.)
"""

import json

from envoy_formula import dashboards, prometheus_config

from tests.helpers.fleet_entries import entry

NOW = 1_800_000_000.0
ENTRIES = {
    "edge": entry("edge", NOW, roles=["front"]),
    "foo1": entry("foo1", NOW, services=["foo"], upstreams=["bar"]),
    "bar1": entry("bar1", NOW, services=["bar"]),
    "bar2": entry("bar2", NOW, services=["bar"], scrape=None),
}


def test_one_dashboard_for_the_edge_and_one_per_service():
    boards = dashboards.all_dashboards(ENTRIES)
    assert sorted(boards) == ["envoy-edge.json", "envoy-service-bar.json", "envoy-service-foo.json"]
    foo = boards["envoy-service-foo.json"]
    assert foo["uid"] == "envoy-service-foo" and foo["title"] == "Envoy: foo"
    assert json.loads(json.dumps(foo)) == foo  # plain JSON, as Grafana imports it
    assert "envoy-edge.json" not in dashboards.all_dashboards({k: v for k, v in ENTRIES.items() if k != "edge"})


def test_a_caller_gets_ingress_upstream_and_restart_panels():
    titles = [p["title"] for p in dashboards.all_dashboards(ENTRIES)["envoy-service-foo.json"]["panels"]]
    assert titles == ["Requests per second", "Latency p50 / p99", "5xx per second", "Upstream requests per second",
                      "Upstream failures per second", "Upstream latency p99", "Circuit breaker overflows",
                      "Outlier ejections", "Hot restart epoch"]
    bar_titles = [p["title"] for p in dashboards.all_dashboards(ENTRIES)["envoy-service-bar.json"]["panels"]]
    assert "Upstream requests per second" not in bar_titles  # bar calls nothing


def test_queries_select_the_service_its_upstreams_and_the_host_variable():
    board = dashboards.all_dashboards(ENTRIES)["envoy-service-foo.json"]
    queries = dict(dashboards.queries(board))
    assert queries["Requests per second"] == (
        'sum(rate(envoy_http_downstream_rq_total{envoy_services=~".*,foo,.*",host=~"$host",'
        'envoy_http_conn_manager_prefix=~"ingress_foo"}[$__rate_interval]))')
    assert 'envoy_cluster_name=~"bar"' in queries["Upstream requests per second"]
    latency = [expr for title, expr in dashboards.queries(board) if title == "Latency p50 / p99"]
    assert [expr.split(",")[0] for expr in latency] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    panel = board["panels"][0]
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert [t["refId"] for t in board["panels"][1]["targets"]] == ["A", "B"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["host"]["query"] == "label_values(envoy_server_hot_restart_epoch, host)"


def test_the_edge_covers_its_front_listeners_and_every_real_upstream():
    queries = dict(dashboards.queries(dashboards.all_dashboards(ENTRIES)["envoy-edge.json"]))
    assert 'envoy_http_conn_manager_prefix=~"front_http|front_https"' in queries["Requests per second"]
    assert 'envoy_cluster_name!~"local_.*|envoy_admin|discovery|zipkin"' in queries["Upstream requests per second"]
    assert 'envoy_roles=~".*,front,.*"' in queries["Hot restart epoch"]


def test_scrape_targets_carry_the_labels_the_dashboards_use():
    groups, missing = prometheus_config.target_groups(ENTRIES)
    assert missing == ["bar2"]  # no stats listener: said, not skipped silently
    assert groups[0] == {"targets": ["10.0.0.1:9902"],
                         "labels": {"host": "bar1", "envoy_roles": ",sidecar,", "envoy_services": ",bar,"}}
    config = prometheus_config.prometheus_yml(groups, "5s")
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/stats/prometheus" and job["scrape_interval"] == "5s"
    assert [g["labels"]["host"] for g in job["static_configs"]] == ["bar1", "edge", "foo1"]
