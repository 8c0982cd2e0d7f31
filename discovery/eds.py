"""
Envoy v3 REST EDS: registered hosts -> ClusterLoadAssignments. One locality per (region, az),
a weight per endpoint, canaries flagged in the ``envoy.lb`` metadata Envoy reads for canary stats.
``version_info`` is a digest of the answer itself, so an unchanged answer keeps its version and
Envoy skips the update; heartbeats (new last_check_in) do not change it.

Envoy's REST request is ``{"version_info":..., "node":{...}, "resource_names":[...], "type_url":...}``
in proto field order (Envoy's ``HttpSubscriptionImpl`` serialises its request with the node first
and the names after it), and the node is ~77 KB of which nothing is used here. ``parse_request``
reads the version from the head and the names from the tail without parsing the node.
"""

import hashlib
import json
import re

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


VERSION_HEAD = re.compile(rb'\{\s*"version_info"\s*:\s*"([^"\\]{0,256})"')
NAMES_KEY = b'"resource_names":'


def parse_request(body):
    """(version_info, cluster names, used_fast_path) of a DiscoveryRequest body (bytes).

    Fast path: the last ``"resource_names":`` key is taken as the start of the request's tail and
    ``{`` + tail must parse as a JSON object. A JSON string cannot contain that byte sequence (its
    quotes would be escaped), and if the key belonged to an object nested in the node, the tail
    would close more brackets than it opens and fail to parse; so a tail that parses is the
    top-level one. The node itself is not validated. Anything else (a wildcard request without
    names, camelCase field names, a body of another shape) takes the full ``json.loads`` path.
    Raises ValueError on a malformed request.
    """
    at = body.rfind(NAMES_KEY)
    if at > 0:
        try:
            tail = json.loads(b"{" + body[at:])
        except ValueError:
            tail = None
        if isinstance(tail, dict) and "version_info" in tail:
            version = tail["version_info"]
            return (version if isinstance(version, str) else ""), requested_clusters(tail), True
        if isinstance(tail, dict):
            head = VERSION_HEAD.match(body)
            version = head.group(1).decode() if head else ""
            if head is None and body.lstrip().startswith(b'{"version_info"'):
                tail = None  # an escaped or odd version string: let the full parser read it
            else:
                return version, requested_clusters(tail), True
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    names = requested_clusters(request)
    version = request.get("version_info", request.get("versionInfo", "")) if isinstance(request, dict) else ""
    return (version if isinstance(version, str) else ""), names, False


def combined_version(views):
    """The version of an answer made of these per-service views (each carries its own digest)."""
    if len(views) == 1:
        return views[0].version
    joined = "\n".join(f"{v.service}={v.version}" for v in views).encode()
    return hashlib.sha256(joined).hexdigest()[:16]


def response_body(version, views):
    """The DiscoveryResponse as bytes, from the views' pre-serialised ClusterLoadAssignments."""
    resources = b",".join(v.cla_json for v in views)
    return (b'{"version_info":"' + version.encode() + b'","resources":[' + resources
            + b'],"type_url":"' + CLA_TYPE.encode() + b'"}')
