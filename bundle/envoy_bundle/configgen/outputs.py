"""
What the generator writes for a host, as relative paths under the config dir:

- ``static`` mode: ``envoy.yaml``, one bootstrap with every listener and cluster inline (a change
  is a hot restart).
- ``files`` mode: ``envoy.yaml`` is a bootstrap that rarely changes (node, admin, overload manager,
  stats sinks, the formula's own clusters: discovery, zipkin) whose dynamic resources point at
  files Envoy watches: ``xds/<generation>/lds/listeners.yaml``, ``.../cds/clusters.yaml`` and one
  ``.../rds/<route config>/routes.yaml`` per HTTP listener, each a DiscoveryResponse whose
  ``version_info`` is a digest of its resources. A route or cluster change is then a file renamed
  into place, applied by the running Envoy without a restart. The generation is a digest of the
  rest of the bootstrap: a bootstrap change (a hot restart) gets new files the running Envoy does
  not watch, so the old epoch keeps its resources and a rollback finds them as they were.

Both modes come from the same render: files mode splits the static bootstrap, so the two can
never disagree, and the static bootstrap is the *effective* config that ``envoy --mode validate``
checks before anything is written. Every mode also writes ``client.json`` for envoy_client (the
egress address and each upstream's timeout and retry policy, within the network team's bounds).
"""

import copy
import hashlib
import json

import yaml

BOOTSTRAP = "envoy.yaml"
CLIENT = "client.json"
# Clusters the bootstrap itself needs: an API config source must name a static cluster (discovery
# for EDS, with several instances also the listener retrying fetches and its cluster), and the
# tracer's collector lives as long as the bootstrap's tracing settings.
BOOTSTRAP_CLUSTERS = ("discovery", "discovery_instances", "zipkin")
BOOTSTRAP_LISTENERS = ("discovery_retry",)
TYPES = {
    "lds": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "rds": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
}
HCM = "envoy.filters.network.http_connection_manager"


def lds_path(generation):
    return f"xds/{generation}/lds/listeners.yaml"


def cds_path(generation):
    return f"xds/{generation}/cds/clusters.yaml"


def rds_path(generation, name):
    return f"xds/{generation}/rds/{name}/routes.yaml"


def version_of(resources):
    canonical = json.dumps(resources, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def discovery_response(kind, resources):
    typed = [{"@type": TYPES[kind], **resource} for resource in resources]
    return {"version_info": version_of(typed), "resources": typed}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (certificate chains) as literal blocks: a diff then shows their lines."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def dump(data):
    return yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=1 << 20)


def file_source(config_dir, relative):
    path = f"{config_dir.rstrip('/')}/{relative}"
    return {"resource_api_version": "V3",
            "path_config_source": {"path": path, "watched_directory": {"path": path.rsplit("/", 1)[0]}}}


def _route_configs(listeners, config_dir, generation):
    """Each HTTP listener's inline route config becomes an RDS reference; returns the configs."""
    routes = []
    for listener in listeners:
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typed_config", {})
                if network_filter.get("name") != HCM or "route_config" not in hcm:
                    continue
                route_config = hcm.pop("route_config")
                if all(existing != route_config for existing in routes):
                    routes.append(route_config)
                hcm["rds"] = {"route_config_name": route_config["name"],
                              "config_source": file_source(config_dir, rds_path(generation, route_config["name"]))}
    return routes


def split(effective_text, config_dir):
    """{relative path: text} of files mode, from the effective static bootstrap."""
    effective = yaml.safe_load(effective_text)
    static = effective.get("static_resources", {})
    every_listener = static.get("listeners") or []
    listeners = copy.deepcopy([item for item in every_listener if item["name"] not in BOOTSTRAP_LISTENERS])
    clusters = static.get("clusters") or []
    bootstrap = {key: value for key, value in effective.items() if key != "static_resources"}
    bootstrap["static_resources"] = {"clusters": [c for c in clusters if c["name"] in BOOTSTRAP_CLUSTERS]}
    kept = [item for item in every_listener if item["name"] in BOOTSTRAP_LISTENERS]
    if kept:
        bootstrap["static_resources"]["listeners"] = kept
    generation = version_of(bootstrap)[:12]
    route_configs = _route_configs(listeners, config_dir, generation)
    bootstrap["dynamic_resources"] = {"lds_config": file_source(config_dir, lds_path(generation)),
                                      "cds_config": file_source(config_dir, cds_path(generation))}
    files = {
        BOOTSTRAP: "# Rendered by envoy-configgen (files mode): listeners, clusters and routes are in "
                   f"xds/{generation}/ beside it.\n# Do not edit: Salt (envoy.config_managed) overwrites it.\n"
                   + dump(bootstrap),
        lds_path(generation): dump(discovery_response("lds", listeners)),
        cds_path(generation): dump(discovery_response("cds", [c for c in clusters if c["name"] not in BOOTSTRAP_CLUSTERS])),
    }
    for route_config in route_configs:
        files[rds_path(generation, route_config["name"])] = dump(discovery_response("rds", [route_config]))
    return files


def _policy(settings):
    return {"timeout_ms": settings["timeout_ms"] or None, "per_try_timeout_ms": settings.get("per_try_timeout_ms"),
            "retries": settings["retries"], "retry_on": settings["retry_on"]}


def client_config(net, upstream_policies, overridable):
    """client.json for envoy_client: the egress, the pillar's upstream defaults and bounds, and the
    policy each upstream's egress route was rendered with. Bounds are widened to hold the defaults,
    so the file is always consistent (the bounds say what a call may ask for)."""
    egress = net["listeners"]["egress"]
    defaults = _policy(net["defaults"]["upstreams"])
    bounds = {}
    for knob in ("timeout_ms", "per_try_timeout_ms", "retries"):
        limits = (overridable or {}).get("upstreams", {}).get(knob)
        if not limits:
            continue
        held = [defaults[knob]] + [p[knob] for p in upstream_policies.values() if p.get(knob) is not None]
        held = [value for value in held if value is not None]
        bounds[knob] = {"min": min([limits["min"], *held]), "max": max([limits["max"], *held])}
    upstreams = {}
    for name, policy in sorted(upstream_policies.items()):
        entry = {key: value for key, value in policy.items() if value is not None or key == "per_try_timeout_ms"}
        if policy["timeout_ms"] is None:  # a stream: no whole-call timeout to send
            entry.pop("timeout_ms", None)
        upstreams[name] = entry
    if defaults["timeout_ms"] is None:
        defaults.pop("timeout_ms")
    data = {"format": 1, "egress": {"address": egress["address"], "port": egress["port"]},
            "defaults": defaults, "bounds": bounds, "upstreams": upstreams}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def outputs(effective_text, mode, config_dir, client_json):
    files = {BOOTSTRAP: effective_text} if mode == "static" else split(effective_text, config_dir)
    if client_json is not None:
        files[CLIENT] = client_json
    return {"format": 1, "mode": mode, "effective": effective_text, "files": files}
