"""
The fleet report's rows from mine entries (``envoy_formula.fleet_report``): every minion a row, the
ones that did not report saying so, red/amber/green with the reasons, ages, and the certificate
column only when some host reports certificates.
"""

import datetime

from envoy_formula import fleet_report

from tests.helpers.fleet_entries import entry

NOW = 1_800_000_000.0


def by_minion(rows):
    return {r["minion"]: r for r in rows}


def iso_in(seconds):
    return datetime.datetime.fromtimestamp(NOW + seconds, datetime.timezone.utc).isoformat()


def test_every_targeted_minion_is_a_row_even_without_an_entry():
    entries = {"web1": entry("web1", NOW, services=["foo"])}
    rows = by_minion(fleet_report.rows(["web1", "web2"], entries, NOW))
    assert set(rows) == {"web1", "web2"}
    assert rows["web2"]["reporting"] == "no report" and rows["web2"]["health"] == "red"
    assert rows["web2"]["problems"] == ["no report"]
    assert rows["web1"]["health"] == "green" and rows["web1"]["problems"] == []
    assert rows["web1"]["age_s"] == 30.0


def test_an_entry_older_than_three_intervals_is_stale_and_red():
    entries = {"old": entry("old", NOW, age=211, interval=70), "fresh": entry("fresh", NOW, age=209, interval=70)}
    rows = by_minion(fleet_report.rows(["old", "fresh"], entries, NOW))
    assert rows["old"]["reporting"] == "stale" and rows["old"]["health"] == "red"
    assert rows["old"]["problems"] == ["no report for 3m"]
    assert rows["old"]["live"] is True  # the last thing it said is still shown
    assert rows["fresh"]["reporting"] == "ok" and rows["fresh"]["health"] == "green"


def test_a_live_ask_marks_who_did_not_answer_whatever_the_mine_says():
    entries = {"up": entry("up", NOW, age=1)}
    rows = by_minion(fleet_report.rows(["up", "down"], entries, NOW, answered={"up"}))
    assert rows["down"]["reporting"] == "did not answer" and rows["down"]["health"] == "red"
    assert rows["up"]["reporting"] == "ok"


def test_an_answer_that_is_not_a_summary_is_a_bad_entry():
    rows = by_minion(fleet_report.rows(["x"], {"x": "'envoy.report_summary' is not available."}, NOW, answered={"x"}))
    assert rows["x"]["reporting"] == "bad entry" and rows["x"]["health"] == "red"
    assert "not available" in rows["x"]["drift_detail"]


def test_envoy_not_live_is_red():
    row = fleet_report.row("web", entry("web", NOW, live=False), NOW)
    assert row["health"] == "red" and row["problems"] == ["Envoy not LIVE (stopped)"]
    assert fleet_report.display_row(row)["envoy"] == "STOPPED"


def test_amber_says_what_needs_a_look():
    data = entry("web", NOW, drift=True, services=["foo"])
    data["status"]["config_sha256"]["running"] = "f" * 64
    data["status"]["last_restart"].update(outcome="failed", error="epoch 3 exited 1")
    data["status"]["highstate"]["result"] = False
    data["rejected"] = {"subscriptions": {"cds": 2}, "inputs": {"reason": "bad cluster", "at": "2026-11-27T07:00:00"}}
    data["discovery"]["services"][0]["current"] = False
    row = fleet_report.row("web", data, NOW)
    assert row["health"] == "amber"
    assert row["problems"] == ["config on disk not running", "drift: envoy.yaml", "last restart hot failed",
                               "cds: 2 rejected", "inputs refused at 2026-11-27T07:00:00: bad cluster",
                               "highstate failing", "discovery: 0 of 1 registered"]
    shown = fleet_report.display_row(row)
    assert shown["drift"] == "DRIFT" and shown["last_restart"] == "hot failed: epoch 3 exited 1"
    assert shown["config"] == "5f1c0ad8e3b9 (running ffffffffffff)"
    assert shown["discovery"] == "0/1 (20s ago)"


def test_inputs_that_do_not_render_are_amber_with_the_reason():
    data = entry("web", NOW)
    data["drift"] = {"drift": None, "files": [], "error": "bad manifest: foo.yaml: ingress.port is required"}
    row = fleet_report.row("web", data, NOW)
    assert row["health"] == "amber" and row["problems"] == [
        "inputs do not render: bad manifest: foo.yaml: ingress.port is required"]


def test_certificates_show_a_column_only_when_a_host_reports_them():
    plain = fleet_report.rows(["a"], {"a": entry("a", NOW)}, NOW)
    assert "cert_expiry" not in fleet_report.display_rows(plain)[0]
    soon = entry("b", NOW, certificates={"earliest_expiry": iso_in(3 * 86400), "identities": {"foo": {}}})
    gone = entry("c", NOW, certificates={"earliest_expiry": iso_in(-60), "identities": {}})
    rows = fleet_report.rows(["a", "b", "c"], {"a": entry("a", NOW), "b": soon, "c": gone}, NOW)
    shown = {r["minion"]: r for r in fleet_report.display_rows(rows)}
    assert shown["a"]["cert_expiry"] == "-" and shown["b"]["cert_expiry"] == iso_in(3 * 86400)
    health = by_minion(rows)
    assert health["b"]["health"] == "amber" and health["b"]["problems"] == ["certificate expires in 3d"]
    assert health["c"]["health"] == "red" and "certificate expired" in health["c"]["problems"]


def test_rows_come_worst_first_and_counts_add_up():
    entries = {"a": entry("a", NOW), "b": entry("b", NOW, live=False), "c": entry("c", NOW, drift=True)}
    rows = fleet_report.rows(["a", "b", "c", "d"], entries, NOW)
    assert [r["minion"] for r in rows] == ["b", "d", "c", "a"]
    assert fleet_report.counts(rows) == {"red": 2, "amber": 1, "green": 1}


def test_durations_read_like_ages():
    assert [fleet_report.human_duration(s) for s in (None, 5, 59, 60, 3599, 3600, 86400 * 2 + 5)] == [
        "-", "5s", "59s", "1m", "59m", "1h", "2d"]
    assert fleet_report.parse_time("2026-11-27T07:01:02Z") == fleet_report.parse_time("2026-11-27T07:01:02+00:00")
    assert fleet_report.parse_time("soon") is None


def test_the_table_shows_envoys_release_and_the_json_its_whole_build_version():
    build = "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"
    live = entry("a", NOW)
    live["status"]["envoy_version"] = build
    row = fleet_report.rows(["a"], {"a": live}, NOW)[0]
    assert row["envoy_version"] == build
    assert fleet_report.display_row(row)["version"] == "1.40.0"
    assert [fleet_report.release(v) for v in ("1.40.0", "dev", None, "")] == ["1.40.0", "dev", None, None]
