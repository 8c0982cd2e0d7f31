"""
``salt-run envoy.report format=html``'s page (``envoy_formula.report_html``) in a real headless
Chromium: it opens from a file with nothing fetched, shows every host red/amber/green worst first,
the burndown chart and the services, and clicking a column header sorts the table (again: the
other way round).
"""

import pytest
from envoy_formula import burndown, fleet_report, report_html

from tests.helpers.browser import chromium, require_browser
from tests.helpers.fleet_entries import entry

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    require_browser()
    entries = {
        "web1": entry("web1", NOW, age=40, services=["foo"], upstreams=["bar"]),
        "web2": entry("web2", NOW, age=10, services=["foo"], upstreams=["bar"], drift=True),
        "api1": entry("api1", NOW, age=25, live=False, services=["bar"]),
        "api2": entry("api2", NOW, age=55, services=["bar"], ingress_delta=0, catalogue=["bar", "foo", "legacy"]),
    }
    minions = [*entries, "gone1"]
    rows = fleet_report.rows(minions, entries, NOW)
    services = burndown.classify(entries, {r["minion"] for r in rows if r["reporting"] == "ok"})
    points = [{"at": NOW - 86400 * (3 - i), "not started": 2 - min(i, 2), "deployed": 1, "in use": min(i, 2)}
              for i in range(4)]
    path = tmp_path_factory.mktemp("page") / "fleet.html"
    path.write_text(report_html.page(rows, services, points, NOW))
    with chromium() as driver:
        driver.get(path.as_uri())
        yield driver, path


def column(driver, table, key):
    return [cell.text for cell in driver.find_elements("css selector", f"#{table} tbody td.{key}")]


def header(driver, table, key):
    return driver.find_element("css selector", f'#{table} th[data-key="{key}"]')


def test_the_page_fetches_nothing(page):
    driver, path = page
    text = path.read_text()
    assert "<link" not in text and " src=" not in text and "@import" not in text and "url(" not in text
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert driver.title == "Envoy fleet"


def test_every_host_shows_worst_first_with_its_colour(page):
    driver, _ = page
    assert column(driver, "fleet", "minion") == ["api1", "gone1", "web2", "api2", "web1"]
    assert column(driver, "fleet", "health") == ["red", "red", "amber", "green", "green"]
    rows = driver.find_elements("css selector", "#fleet tbody tr")
    assert [r.get_attribute("class") for r in rows] == ["red", "red", "amber", "green", "green"]
    assert column(driver, "fleet", "envoy") == ["STOPPED", "NO REPORT", "LIVE", "LIVE", "LIVE"]
    assert column(driver, "fleet", "drift")[2] == "DRIFT"
    colour = rows[0].find_element("css selector", "td").value_of_css_property("border-left-color")
    assert colour == "rgba(198, 40, 40, 1)"  # #c62828
    counts = driver.find_elements("css selector", "#counts span")
    assert [c.text for c in counts] == ["2 red", "1 amber", "2 green"]


def test_clicking_a_header_sorts_and_clicking_again_reverses(page):
    driver, _ = page
    header(driver, "fleet", "minion").click()
    assert column(driver, "fleet", "minion") == ["api1", "api2", "gone1", "web1", "web2"]
    assert header(driver, "fleet", "minion").get_attribute("aria-sort") == "ascending"
    header(driver, "fleet", "minion").click()
    assert column(driver, "fleet", "minion") == ["web2", "web1", "gone1", "api2", "api1"]
    assert header(driver, "fleet", "minion").get_attribute("aria-sort") == "descending"
    header(driver, "fleet", "age").click()  # numerically, by seconds: 10s < 25s < 40s < 55s, none last
    assert column(driver, "fleet", "age") == ["10s", "25s", "40s", "55s", "-"]
    assert header(driver, "fleet", "minion").get_attribute("aria-sort") == "none"
    header(driver, "fleet", "health").click()
    assert column(driver, "fleet", "health") == ["red", "red", "amber", "green", "green"]


def test_the_burndown_chart_and_the_services(page):
    driver, _ = page
    bars = driver.find_elements("css selector", "#burndown rect.bar")
    last = [b for b in bars if float(b.get_attribute("x")) == max(float(x.get_attribute("x")) for x in bars)]
    assert {b.get_attribute("data-state"): int(b.get_attribute("data-count")) for b in last} == {
        "deployed": 1, "in use": 2}
    assert driver.find_element("id", "burndown").size["height"] == 240
    assert column(driver, "services", "service") == ["bar", "foo", "legacy"]
    # bar: api1's Envoy is stopped, api2's runs but served nothing since its last sample.
    assert column(driver, "services", "state") == ["deployed", "in use", "not started"]
    assert column(driver, "services", "hosts") == ["2", "2", "0"]
    assert column(driver, "services", "deployed") == ["1", "2", "0"]
    assert driver.find_element("id", "burndown-now").text == "1 in use, 1 deployed, 1 not started"


def test_a_screenshot_shows_the_page(page):
    driver, path = page
    shot = path.with_suffix(".png")
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
