"""Pure logic of the discovery service: validation, EDS assembly, versions, metrics, CLI args."""

import argparse
import json

import pytest

from discovery import eds
from discovery.metrics import Metrics
from discovery.model import Host, InvalidRegistration, parse_endpoint, parse_registration
from discovery.server import listen_address, parse_args

FORM = {"ip": "10.0.0.1", "port": "80", "revision": "r", "service_repo_name": "s",
        "tags": json.dumps({"az": "a", "region": "r", "instance_id": "i"})}


def host(ip, port=80, az="a", region="r", **tags):
    return Host("svc", ip, port, "r", "svc", {"az": az, "region": region, "instance_id": "i", **tags}, 1.0)


def test_a_good_form_becomes_a_host_with_normalised_ip():
    got = parse_registration("svc", dict(FORM, ip="FD00:0:0::1", port=" 443 "), now=5.0)
    assert (got.ip_address, got.port, got.last_check_in, got.key) == ("fd00::1", 443, 5.0, "[fd00::1]:443")


@pytest.mark.parametrize("field, value", [("ip", "1.2.3"), ("port", "1e3"), ("tags", '"a string"'),
                                          ("tags.load_balancing_weight", 100.0)])
def test_the_error_names_the_field(field, value):
    form = dict(FORM)
    if field.startswith("tags."):
        form["tags"] = json.dumps({**json.loads(FORM["tags"]), "load_balancing_weight": value})
    else:
        form[field] = value
    with pytest.raises(InvalidRegistration) as err:
        parse_registration("svc", form, now=0.0)
    assert err.value.field == field and str(err.value).startswith(field + ":")


def test_weight_bounds_are_inclusive():
    for weight in (1, 100):
        tags = json.dumps({**json.loads(FORM["tags"]), "load_balancing_weight": weight})
        assert parse_registration("svc", dict(FORM, tags=tags), 0.0).tags["load_balancing_weight"] == weight


@pytest.mark.parametrize("text, expected", [("10.0.0.1:80", ("10.0.0.1", 80)), ("10.0.0.1", ("10.0.0.1", None)),
                                            ("[fd00::1]:8080", ("fd00::1", 8080)), ("fd00::1", ("fd00::1", None))])
def test_endpoint_paths(text, expected):
    assert parse_endpoint(text) == expected


def test_localities_group_by_region_and_az_in_a_stable_order():
    hosts = [host("10.0.0.3", az="b"), host("10.0.0.1", az="a"), host("10.0.0.2", az="a", region="r2")]
    cla = eds.cluster_load_assignment("svc", hosts)
    assert [(e["locality"]["region"], e["locality"]["zone"]) for e in cla["endpoints"]] == [
        ("r", "a"), ("r", "b"), ("r2", "a")]
    assert cla == eds.cluster_load_assignment("svc", list(reversed(hosts)))


def test_version_follows_content_only():
    one = [eds.cluster_load_assignment("svc", [host("10.0.0.1")])]
    same = [eds.cluster_load_assignment("svc", [host("10.0.0.1")])]
    heavier = [eds.cluster_load_assignment("svc", [host("10.0.0.1", load_balancing_weight=2)])]
    assert eds.version_of(one) == eds.version_of(same) != eds.version_of(heavier)


def test_requested_clusters_accepts_both_json_spellings_and_dedups():
    assert eds.requested_clusters({"resourceNames": ["b", "a", "b"]}) == ["a", "b"]
    assert eds.requested_clusters({}) == []
    with pytest.raises(ValueError, match="resource_names"):
        eds.requested_clusters({"resource_names": [1]})


def test_metrics_text_escapes_labels_and_keeps_big_counts_exact():
    metrics = Metrics()
    metrics.inc("discovery_registrations_total", 1234567, result="ok")
    text = metrics.render({'we"ird\\svc': 3})
    assert 'discovery_registrations_total{result="ok"} 1234567\n' in text
    assert 'discovery_hosts{service="we\\"ird\\\\svc"} 3\n' in text


def test_cli_arguments():
    args = parse_args(["--listen", "0.0.0.0:9000", "--redis", "redis://x", "--ttl", "30"])
    assert (args.listen, args.redis, args.ttl) == (("0.0.0.0", 9000), "redis://x", 30.0)
    with pytest.raises(argparse.ArgumentTypeError):
        listen_address("nope")
    with pytest.raises(SystemExit):
        parse_args(["--redis", "redis://x", "--sqlite", "/tmp/x"])


def test_a_real_envoy_request_is_read_without_parsing_the_node():
    node = {"id": "n", "metadata": {"resource_names": ["nested"]}, "extensions": [{"name": "x"}] * 50}
    body = json.dumps({"version_info": "abc", "node": node, "resource_names": ["b", "a"],
                       "type_url": eds.CLA_TYPE}, separators=(",", ":")).encode()
    assert eds.parse_request(body) == ("abc", ["a", "b"], True)
    # Without top-level names the nested key must not be taken for them: the full parse decides.
    body = json.dumps({"node": node, "type_url": eds.CLA_TYPE}).encode()
    assert eds.parse_request(body) == ("", [], False)
    assert eds.parse_request(b'{"versionInfo": "v", "resourceNames": ["a"]}') == ("v", ["a"], False)
    for bad in (b"{nope", b'{"resource_names": "a"}', b'{"node": {}, "resource_names": ["a"], "type_url": "x"}'):
        with pytest.raises(ValueError):
            eds.parse_request(bad)


@pytest.mark.parametrize("total, expired, held", [
    (1, 1, False), (2, 1, False), (2, 2, True), (3, 1, False), (3, 2, True), (4, 2, False), (4, 3, True),
    (100, 50, False), (100, 51, True), (0, 0, False)])
def test_the_sweep_guard_rule(total, expired, held):
    from discovery.views import SweepGuard

    assert SweepGuard(0.5, 1).holds(total, expired) is held
    assert SweepGuard(1.0, 1).holds(total, expired) is False  # 1 turns it off
    assert SweepGuard(0.5, 1).holds(total, expired, fleet_held=True) is (expired > 0)


def test_the_fleet_wide_hold_ends_a_grace_after_check_ins_resume():
    """Not at once: the hosts of an outage come back over a heartbeat interval, and a single-host
    service whose host is not back yet would be emptied in between (found on the lab)."""
    from discovery.views import SweepGuard, Views

    views = Views(store=None, ttl=600, guard=SweepGuard(0.5, 1), grace=300)
    assert views.fleet_hold(False, 1000) is False
    views.fleet_held = views.fleet_hold(True, 1000)
    assert views.fleet_held is True
    assert views.fleet_hold(False, 2000) is True   # the share fell: the grace starts
    assert views.fleet_hold(False, 2299) is True
    assert views.fleet_hold(True, 2100) is True    # rose again: the grace starts over
    assert views.fleet_hold(False, 2200) is True
    assert views.fleet_hold(False, 2499) is True
    assert views.fleet_hold(False, 2500) is False


def test_a_held_view_shows_every_stored_host_and_a_live_one_only_live_hosts():
    from discovery.views import SweepGuard, build_view

    stored = [host(f"10.0.0.{i}") for i in range(1, 5)]
    stored = [h.__class__(**{**h.__dict__, "last_check_in": t}) for h, t in zip(stored, (10, 10, 10, 100), strict=True)]
    held = build_view("svc", stored, since=50, ttl=60, guard=SweepGuard())
    assert (held.held, len(held.hosts), held.expired, held.valid_until) == (True, 4, 3, 160)
    one_dead = build_view("svc", stored[2:], since=50, ttl=60, guard=SweepGuard())
    assert (one_dead.held, [h.ip_address for h in one_dead.hosts]) == (False, ["10.0.0.4"])
    assert held.version != one_dead.version and len(held.version) == 16


def test_counters_from_every_worker_are_summed():
    from discovery.metrics import shared_block

    block = shared_block(3)
    workers = [Metrics(block, row=i, rows=3) for i in range(3)]
    for i, metrics in enumerate(workers):
        metrics.inc("discovery_eds_requests_total", i + 1, result="ok")
    assert all(m.value("discovery_eds_requests_total", result="ok") == 6 for m in workers)
    assert 'discovery_eds_requests_total{result="ok"} 6\n' in workers[0].render({})


def test_the_last_host_of_a_service_stays_visible_for_the_grace_period():
    from discovery.views import SweepGuard, build_view

    solo = [host("10.0.0.1").__class__(**{**host("10.0.0.1").__dict__, "last_check_in": 40.0})]
    # Expired 10 s ago (since 50), grace 30: still visible, and the answer changes when the grace ends.
    view = build_view("svc", solo, since=50, ttl=60, guard=SweepGuard(), grace=30)
    assert ([h.ip_address for h in view.hosts], view.held, view.valid_until) == (["10.0.0.1"], False, 130)
    gone = build_view("svc", solo, since=75, ttl=60, guard=SweepGuard(), grace=30)
    assert gone.hosts == [] and gone.cla["endpoints"] == []
