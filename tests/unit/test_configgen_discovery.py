"""
The discovery side of the generated config: one instance is one plain cluster; several instances
(``envoy:discovery:address`` as a list) get the retrying shape of docs/discovery.md (golden case
tests/golden/discovery_ha, validated by the real Envoy there; behaviour under an instance kill in
tests/integration/test_discovery_scale.py and on the lab in tests/mesh/test_discovery_fleet.py). In files mode that
shape stays in the bootstrap, so a route or cluster change never touches it.
"""

import pytest
import yaml
from envoy_bundle.configgen import ConfigError, generate
from envoy_bundle.configgen.generate import generate_outputs
from envoy_bundle.configgen.outputs import cds_path, lds_path

MANIFEST = ("/etc/envoy/manifest.d/api.yaml",
            "service: api\ningress: {port: 9211, app_port: 8081}\nupstreams: [{service: rides}]\n")
HOST = {"node_id": "n1", "admin_port": 9901, "log_dir": "/var/log/envoy"}


def pillar(address, **discovery):
    return {"roles": ["sidecar"], "services": {"rides": {"discovery": "eds"}, "maps": {"hosts": ["10.0.4.10:80"]}},
            "discovery": {"address": address, **discovery}}


def rendered(address, manifests=(MANIFEST,), **discovery):
    return yaml.safe_load(generate(list(manifests), pillar(address, **discovery), HOST))["static_resources"]


def named(items, name):
    return next((item for item in items if item["name"] == name), None)


def test_one_instance_is_one_plain_cluster_whether_listed_or_not():
    for address in ("10.0.0.5:8080", ["10.0.0.5:8080"]):
        static = rendered(address)
        discovery = named(static["clusters"], "discovery")
        assert discovery["type"] == "STATIC" and "health_checks" not in discovery
        assert named(static["clusters"], "discovery_instances") is None
        assert named(static["listeners"], "discovery_retry") is None


def test_several_instances_get_the_retrying_listener_and_two_clusters():
    static = rendered(["10.0.0.5:8080", "10.0.0.6:8080", "10.0.0.7:8080"], retry_port=9950)
    discovery, instances = named(static["clusters"], "discovery"), named(static["clusters"], "discovery_instances")
    assert discovery["type"] == instances["type"] == "STATIC"  # all IPv4: no DNS
    first, fallback = discovery["load_assignment"]["endpoints"]
    assert (first["priority"], fallback["priority"]) == (0, 1)
    assert first["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1",
                                                                                 "port_value": 9950}
    # Only the loopback listener is health checked; the instances never are (no fleet-wide checks).
    assert all(e["endpoint"]["health_check_config"]["disable_active_health_check"] for e in fallback["lb_endpoints"])
    [check] = discovery["health_checks"]
    assert check["http_health_check"]["path"] == "/healthcheck" and check["unhealthy_interval"] == "1.000s"
    assert "health_checks" not in instances
    assert instances["outlier_detection"]["consecutive_local_origin_failure"] == 1
    listener = named(static["listeners"], "discovery_retry")
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9950}
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0] == {"match": {"path": "/healthcheck"}, "direct_response": {"status": 200}}
    policy = routes[1]["route"]["retry_policy"]
    assert routes[1]["route"]["cluster"] == "discovery_instances" and policy["num_retries"] == 3
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    # Every EDS cluster still names `discovery`.
    rides = named(static["clusters"], "rides")
    assert rides["eds_cluster_config"]["eds_config"]["api_config_source"]["cluster_names"] == ["discovery"]


def test_a_dns_name_among_the_instances_makes_both_clusters_strict_dns():
    static = rendered(["10.0.0.5:8080", "discovery-2.internal:8080"])
    assert named(static["clusters"], "discovery")["type"] == "STRICT_DNS"
    assert named(static["clusters"], "discovery_instances")["dns_lookup_family"] == "V4_ONLY"


def test_without_an_eds_service_nothing_of_discovery_is_rendered_and_the_port_is_free():
    static_only = ("/etc/envoy/manifest.d/api.yaml",
                   "service: api\ningress: {port: 9902, app_port: 8081}\nupstreams: [{service: maps}]\n")
    static = rendered(["10.0.0.5:8080", "10.0.0.6:8080"], manifests=(static_only,))
    assert named(static["listeners"], "discovery_retry") is None
    assert not [c for c in static["clusters"] if c["name"].startswith("discovery")]


def test_files_mode_keeps_the_retrying_shape_in_the_bootstrap():
    host = {**HOST, "config_mode": "files", "config_dir": "/etc/envoy"}
    out = generate_outputs([MANIFEST], pillar(["10.0.0.5:8080", "10.0.0.6:8080"]), host)
    bootstrap = yaml.safe_load(out["files"]["envoy.yaml"])
    generation = next(rel for rel in out["files"] if rel.startswith("xds/")).split("/")[1]
    assert [listener["name"] for listener in bootstrap["static_resources"]["listeners"]] == ["discovery_retry"]
    assert {c["name"] for c in bootstrap["static_resources"]["clusters"]} == {"discovery", "discovery_instances"}
    lds = yaml.safe_load(out["files"][lds_path(generation)])["resources"]
    cds = yaml.safe_load(out["files"][cds_path(generation)])["resources"]
    assert "discovery_retry" not in [listener["name"] for listener in lds]
    assert not [c for c in cds if c["name"].startswith("discovery")]


def test_a_catalogue_entry_cannot_take_the_instances_cluster_name():
    bad = pillar(["10.0.0.5:8080", "10.0.0.6:8080"])
    bad["services"]["discovery_instances"] = {"hosts": ["10.0.0.9:80"]}
    with pytest.raises(ConfigError) as caught:
        generate([MANIFEST], bad, HOST)
    assert any("envoy:services:discovery_instances is reserved" in m for m in caught.value.messages)
