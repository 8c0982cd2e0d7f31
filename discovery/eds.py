"""
Envoy v3 REST EDS: registered hosts -> ClusterLoadAssignments. One locality per (region, az),
a weight per endpoint, canaries flagged in the ``envoy.lb`` metadata Envoy reads for canary stats.
``version_info`` is a digest of the answer itself, so an unchanged answer keeps its version and
Envoy skips the update; heartbeats (new last_check_in) do not change it.
"""

import hashlib
import json

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def lb_endpoint(host):
    entry = {"endpoint": {"address": {"socket_address": {"address": host.ip_address,
                                                        "port_value": host.port}}}}
    weight = host.tags.get("load_balancing_weight")
    if weight is not None:
        entry["load_balancing_weight"] = weight
    if host.tags.get("canary") is True:
        entry["metadata"] = {"filter_metadata": {"envoy.lb": {"canary": True}}}
    return entry


def cluster_load_assignment(cluster_name, hosts):
    """A ClusterLoadAssignment (proto3 JSON) for ``hosts``; no hosts gives no endpoints, which
    tells Envoy the cluster is empty (active health checks keep a still-healthy host meanwhile)."""
    localities = {}
    for host in sorted(hosts, key=lambda h: (h.tags["region"], h.tags["az"], h.ip_address, h.port)):
        locality = (host.tags["region"], host.tags["az"])
        localities.setdefault(locality, []).append(lb_endpoint(host))
    return {
        "@type": CLA_TYPE,
        "cluster_name": cluster_name,
        "endpoints": [{"locality": {"region": region, "zone": az}, "lb_endpoints": entries}
                      for (region, az), entries in localities.items()],
    }


def version_of(resources):
    canonical = json.dumps(resources, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def discovery_response(resources):
    return {"version_info": version_of(resources), "resources": resources, "type_url": CLA_TYPE}


def requested_clusters(request_body):
    """The cluster names of a DiscoveryRequest; raises ValueError on a malformed one."""
    if not isinstance(request_body, dict):
        raise ValueError("a DiscoveryRequest must be a JSON object")
    type_url = request_body.get("type_url") or request_body.get("typeUrl")
    if type_url and type_url != CLA_TYPE:
        raise ValueError(f"type_url {type_url!r} is not served here (only {CLA_TYPE})")
    names = request_body.get("resource_names", request_body.get("resourceNames", []))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("resource_names must be a list of cluster names")
    return sorted(set(names))
