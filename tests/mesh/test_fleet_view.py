"""
The fleet view on the mesh lab (issue 13), through a real salt-master and real minions: every Envoy
host publishes its summary to the Salt mine every few seconds (``envoy:report``) and serves
``/stats/prometheus`` on a stats listener (``envoy:listeners:stats``), the admin API staying on
127.0.0.1.

- ``salt-run envoy.report`` lists every minion (the discovery host, which runs no Envoy, as "no
  report"), shows an Envoy stopped on bar2 as not LIVE, and a powered-off bar1 as stale from the
  mine and as not answering when asked live. The HTML page shows the same in a real Chromium.
- ``salt-run envoy.burndown`` sees foo and bar in use while load crosses the mesh.
- A real Prometheus (Debian's) scrapes exactly the targets ``salt-run envoy.prometheus_config``
  writes, all lab addresses, and every query of every panel ``salt-run envoy.dashboards``
  generates returns data.

One mesh for the module; the tests run in file order and the last ones stop Envoy on bar2 and
power bar1 off. Needs root (the lab).
"""

import ipaddress
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers.browser import chromium, full_page_screenshot, require_browser
from tests.helpers.mesh import PORTS, Mesh
from tests.helpers.net import wait_for

ENVOY_HOSTS = ("edge", "foo", "bar1", "bar2")
STATS_PORT = 9902
PROMETHEUS = "127.0.0.1:9090"  # on the master host, inside its own network namespace
REPORT = {"seconds": 5, "splay": 1}
FIGURES = {}


@pytest.fixture(scope="module")
def fleet(lab_available, tmp_path_factory, built_bundle):
    if not shutil.which("prometheus"):
        pytest.skip("needs Debian's prometheus (.ci/debian-packages)")
    overrides = {"envoy": {"listeners": {"stats": {"port": STATS_PORT}}, "report": REPORT}}
    with Mesh(tmp_path_factory.mktemp("fleet-view"), built_bundle, pillar_overrides=overrides) as mesh:
        mesh.salt_run("saltutil.sync_all")  # the runner and the library, to the master
        wait_for(lambda: set(mine(mesh)) >= set(ENVOY_HOSTS), timeout=60, interval=1,
                 what="every Envoy host's summary in the mine")
        yield mesh


def mine(mesh):
    return mesh.salt_run("mine.get", "*", "envoy.report")


def report(mesh, *args):
    return {row["minion"]: row for row in mesh.salt_run("envoy.report", *args)}


def test_every_minion_is_a_row_and_the_envoy_hosts_are_live(fleet):
    began = time.monotonic()
    rows = report(fleet)
    FIGURES["report_wall_s"] = time.monotonic() - began
    assert set(rows) == {"discovery", *ENVOY_HOSTS}
    assert rows["discovery"]["reporting"] == "no report" and rows["discovery"]["health"] == "red"
    for host in ENVOY_HOSTS:
        row = rows[host]
        assert row["reporting"] == "ok" and row["live"] is True, row
        assert row["health"] != "red", row
        assert row["age_s"] < 3 * (REPORT["seconds"] + REPORT["splay"]), row
        assert row["envoy_version"] and row["bundle"] == row["bundle_running"]
        assert row["config"]["applied"] is True and row["drift"] is False, row
    assert rows["bar1"]["discovery"]["registered"] == rows["bar1"]["discovery"]["of"] == 1
    assert rows["edge"]["discovery"]["of"] == 0  # the edge serves no service of its own


def test_the_table_is_salts_table_outputter(fleet):
    text = fleet.salt_run("envoy.report", "tgt=edge,foo,bar1,bar2", "tgt_type=list", out="table")
    assert "Envoy fleet: 4 hosts" in text
    header = next(line for line in text.splitlines() if "minion" in line and "health" in line)
    assert header.index("minion") < header.index("health") < header.index("envoy") < header.index("drift")
    for host in ENVOY_HOSTS:
        assert f" {host} " in text


def test_traffic_through_the_mesh_puts_both_services_in_use(fleet):
    load = fleet.load(rate=50, duration=25)
    try:
        def in_use():
            services = {s["service"]: s for s in fleet.salt_run("envoy.burndown")["services"]}
            return services if services["foo"]["state"] == services["bar"]["state"] == "in use" else None

        services = wait_for(in_use, timeout=60, interval=3, what="foo and bar in use")
    finally:
        result = load.stop()
    assert result["failed"] == 0, result
    assert services["foo"]["in_use"] == ["foo"] and sorted(services["bar"]["deployed"]) == ["bar1", "bar2"]
    assert services["foo"]["ingress_rq"] > 0 and services["foo"]["egress_rq"] > 0
    trend = fleet.salt_run("envoy.burndown")["trend"]
    assert len(trend) >= 2 and trend[-1]["in use"] == 2


def lab_prometheus(fleet):
    """Prometheus on the master host, scraping what envoy.prometheus_config wrote."""
    written = fleet.salt_run("envoy.prometheus_config", "out=/etc/prometheus-lab/prometheus.yml",
                             "scrape_interval=2s")
    assert written["targets"] == 4 and written["without_stats_listener"] == ["discovery"], written
    config = fleet.read("master", "/etc/prometheus-lab/prometheus.yml")
    fleet.lab.daemon("master", ["prometheus", "--config.file=/etc/prometheus-lab/prometheus.yml",
                                "--storage.tsdb.path=/var/lib/prometheus-lab",
                                f"--web.listen-address={PROMETHEUS}"], log="/var/log/prometheus-lab.log")
    return config


def prometheus_get(fleet, path, **params):
    argv = ["curl", "-s", "-m", "10", "-G", f"http://{PROMETHEUS}{path}"]
    for key, value in params.items():
        argv += ["--data-urlencode", f"{key}={value}"]
    return json.loads(fleet.lab.run("master", argv).stdout)


def test_prometheus_scrapes_only_lab_addresses_and_every_panel_has_data(fleet):
    lab_prometheus(fleet)
    lab_net = ipaddress.ip_network("10.77.0.0/24")

    def targets_up():
        active = prometheus_get(fleet, "/api/v1/targets")["data"]["activeTargets"]
        return active if len(active) == 4 and all(t["health"] == "up" for t in active) else None

    active = wait_for(targets_up, timeout=60, interval=1, what="4 Envoy targets up in Prometheus")
    for target in active:
        host = target["labels"]["instance"].rsplit(":", 1)[0]
        assert ipaddress.ip_address(host) in lab_net, target
        assert target["scrapeUrl"].endswith(f":{STATS_PORT}/stats/prometheus")
    assert {t["labels"]["host"] for t in active} == set(ENVOY_HOSTS)
    # What Prometheus's host reaches of bar1: the stats listener, only /stats/prometheus; the
    # admin API is on bar1's 127.0.0.1 only.
    bar1 = fleet.lab.address("bar1")

    def status(url):
        return fleet.lab.run("master", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", url],
                             check=False).stdout

    assert status(f"http://{bar1}:{STATS_PORT}/stats/prometheus") == "200"
    assert status(f"http://{bar1}:{STATS_PORT}/config_dump") == "404"
    assert status(f"http://{bar1}:{PORTS['admin']}/server_info") == "000"  # nothing listens there
    # Requests, and failures for the failure panels: bar answers 503, foo's egress and the edge retry.
    load = fleet.load(rate=40, duration=20)
    for _ in range(5):
        fleet.get_via_edge("/foo/status/503")
    assert load.wait()["failed"] == 0
    written = fleet.salt_run("envoy.dashboards", "out=/srv/dashboards")["written"]
    assert sorted(p.rsplit("/", 1)[1] for p in written) == [
        "envoy-edge.json", "envoy-service-bar.json", "envoy-service-foo.json"]
    empty = []
    for path in written:
        board = json.loads(fleet.read("master", path))
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "30s").replace("$host", ".*")
                answer = prometheus_get(fleet, "/api/v1/query", query=expr)
                assert answer["status"] == "success", (panel["title"], expr, answer)
                if not answer["data"]["result"]:
                    empty.append((board["title"], panel["title"], expr))
    assert not empty, f"queries without data: {json.dumps(empty, indent=1)}"
    rate = prometheus_get(fleet, "/api/v1/query", query='sum(rate(envoy_http_downstream_rq_total'
                          '{envoy_services=~".*,bar,.*",envoy_http_conn_manager_prefix="ingress_bar"}[30s]))')
    assert float(rate["data"]["result"][0]["value"][1]) > 0


def test_a_stopped_envoy_shows_as_not_live(fleet):
    # Keep bar2's scheduled highstate from starting Envoy again during the test (one already
    # running finishes first).
    fleet.salt("bar2", "schedule.disable_job", "envoy-highstate")
    def highstate_running():
        jobs = fleet.salt("bar2", "saltutil.running")["bar2"]
        return any(job.get("fun") in ("envoy.scheduled_highstate", "state.highstate") for job in jobs)

    wait_for(lambda: not highstate_running(), timeout=120, interval=1, what="bar2's highstate to end")
    fleet.salt("bar2", "envoy.stop")
    stopped = time.monotonic()
    rows = wait_for(lambda: (r := report(fleet)) and r["bar2"]["live"] is False and r, timeout=60, interval=0.5,
                    what="the report showing bar2's Envoy stopped")
    FIGURES["envoy_down_to_report_s"] = time.monotonic() - stopped
    assert rows["bar2"]["health"] == "red" and "Envoy not LIVE" in rows["bar2"]["problems"][0]
    print(f"Envoy stopped on bar2 -> the report shows it: {FIGURES['envoy_down_to_report_s']:.1f} s")
    live = report(fleet, "live=True", "tgt=edge,foo,bar1,bar2", "tgt_type=list")
    assert live["bar2"]["live"] is False and live["bar1"]["live"] is True


def test_the_page_shows_the_stopped_host_red(fleet, tmp_path):
    require_browser()
    fleet.salt_run("envoy.report", "format=html", "out=/srv/www/fleet.html")
    page = tmp_path / "fleet.html"
    page.write_text(fleet.read("master", "/srv/www/fleet.html"))
    with chromium() as driver:
        driver.get(page.as_uri())
        rows = {r.find_element("css selector", "td.minion").text: r
                for r in driver.find_elements("css selector", "#fleet tbody tr")}
        assert set(rows) == {"discovery", *ENVOY_HOSTS}
        assert rows["bar2"].get_attribute("class") == "red"
        assert rows["bar2"].find_element("css selector", "td.envoy").text == "STOPPED"
        assert rows["foo"].find_element("css selector", "td.envoy").text == "LIVE"
        services = [c.text for c in driver.find_elements("css selector", "#services tbody td.service")]
        assert services == ["bar", "foo"]
        # docs/fleet-report.png is this screenshot: FLEET_SCREENSHOT=docs/fleet-report.png keeps it.
        shot = Path(os.environ.get("FLEET_SCREENSHOT") or tmp_path / "fleet.png")
        full_page_screenshot(driver, shot)
    print(f"screenshot: {shot}")


def test_a_powered_off_host_goes_stale_and_does_not_answer(fleet):
    fleet.lab.power_off("bar1")
    off = time.monotonic()
    live = report(fleet, "live=True", "tgt=edge,foo,bar1,bar2", "tgt_type=list", "timeout=5")
    assert live["bar1"]["reporting"] == "did not answer" and live["bar1"]["health"] == "red"
    assert live["foo"]["reporting"] == "ok"
    rows = wait_for(lambda: (r := report(fleet)) and r["bar1"]["reporting"] == "stale" and r, timeout=90,
                    interval=1, what="bar1's mine entry going stale")
    FIGURES["power_off_to_stale_s"] = time.monotonic() - off
    assert rows["bar1"]["health"] == "red" and rows["bar1"]["problems"][0].startswith("no report for ")
    print(f"fleet view figures: {FIGURES}")
