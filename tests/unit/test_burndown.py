"""
The adoption burndown (``envoy_formula.burndown``): each service not started, deployed or in use
from the hosts' mine entries, and the history kept in SQLite on the master.
"""

from envoy_formula import burndown

from tests.helpers.fleet_entries import entry

NOW = 1_800_000_000.0


def classify(entries, healthy=None):
    return {s["service"]: s for s in burndown.classify(entries, set(entries) if healthy is None else healthy)}


def test_a_catalogue_service_nobody_runs_is_not_started():
    services = classify({"h1": entry("h1", NOW, services=["foo"], catalogue=["foo", "legacy"])})
    assert services["legacy"]["state"] == "not started" and services["legacy"]["hosts"] == []
    assert services["legacy"]["in_catalogue"] is True


def test_traffic_through_the_ingress_makes_it_in_use():
    services = classify({"h1": entry("h1", NOW, services=["foo"], ingress_delta=12, egress_delta=0)})
    foo = services["foo"]
    assert foo["state"] == "in use" and foo["in_use"] == ["h1"]
    assert foo["ingress_rq"] == 12 and foo["egress_rq"] is None  # foo calls nothing


def test_traffic_out_through_the_egress_counts_for_a_caller():
    services = classify({"h1": entry("h1", NOW, services=["foo"], upstreams=["bar"], ingress_delta=0,
                                     egress_delta=4)})
    assert services["foo"]["state"] == "in use" and services["foo"]["egress_rq"] == 4


def test_live_without_traffic_is_deployed():
    services = classify({"h1": entry("h1", NOW, services=["foo"], upstreams=["bar"], ingress_delta=0,
                                     egress_delta=0)})
    assert services["foo"]["state"] == "deployed" and services["foo"]["deployed"] == ["h1"]


def test_the_first_sample_has_no_delta_yet():
    services = classify({"h1": entry("h1", NOW, services=["foo"], ingress_delta=None, egress_delta=None)})
    assert services["foo"]["state"] == "deployed" and services["foo"]["ingress_rq"] is None


def test_a_manifest_on_a_host_whose_envoy_is_down_or_stale_is_not_deployed():
    entries = {"down": entry("down", NOW, live=False, services=["foo"]),
               "stale": entry("stale", NOW, services=["foo"])}
    foo = classify(entries, healthy={"down"})["foo"]
    assert foo["hosts"] == ["down", "stale"] and foo["deployed"] == [] and foo["state"] == "not started"
    assert foo["in_catalogue"] is True


def test_a_service_with_a_manifest_but_no_catalogue_entry_is_listed():
    services = classify({"h1": entry("h1", NOW, services=["newsvc"], catalogue=["foo"])})
    assert services["newsvc"]["in_catalogue"] is False and services["newsvc"]["state"] == "in use"


def test_history_appends_points_and_reads_the_trend(tmp_path):
    path = str(tmp_path / "cache" / "burndown.sqlite3")
    assert burndown.trend(path) == []
    day = 86400
    first = burndown.classify({"h1": entry("h1", NOW, services=["foo"], ingress_delta=0, egress_delta=0,
                                           catalogue=["foo", "bar"])}, {"h1"})
    burndown.append(path, NOW - 2 * day, first)
    second = burndown.classify({"h1": entry("h1", NOW, services=["foo"], catalogue=["foo", "bar"]),
                                "h2": entry("h2", NOW, services=["bar"], ingress_delta=0, egress_delta=0,
                                            catalogue=["foo", "bar"])}, {"h1", "h2"})
    burndown.append(path, NOW, second)
    assert burndown.trend(path) == [
        {"at": NOW - 2 * day, "not started": 1, "deployed": 1, "in use": 0},
        {"at": NOW, "not started": 0, "deployed": 1, "in use": 1}]
    assert burndown.trend(path, since=NOW - day) == [{"at": NOW, "not started": 0, "deployed": 1, "in use": 1}]
    assert [p["state"] for p in burndown.service_history(path, "foo")] == ["deployed", "in use"]
    assert burndown.totals(second) == {"not started": 0, "deployed": 1, "in use": 1}
