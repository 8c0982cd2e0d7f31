"""
From checked inputs to the plain data the templates render: listeners and clusters with every
default applied, sorted wherever Envoy does not care about order, so equal inputs give equal bytes.
"""

from . import mesh_tls
from .policy import HTTP_TYPES, health_check_protocol
from .specs import STREAM_KNOBS

# Failures where nothing reached the app: retrying them cannot repeat a request.
SAFE_RETRY_ON = "connect-failure,refused-stream,reset-before-request"
REDIRECT_CODE_NAMES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER",
                       307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}


def split_host_port(value):
    host, _, port = value.rpartition(":")
    return host, int(port)


def is_ipv4(host):
    return all(part.isdigit() for part in host.split(".")) and host.count(".") == 3


def merged(base, override):
    """``override``'s set keys over ``base``, recursively (manifest knobs over pillar defaults)."""
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class ModelBuilder:
    def __init__(self, manifests, net, host, discovery):
        self.manifests = manifests
        self.net = net
        self.host = host
        self.discovery = discovery
        self.defaults = net["defaults"]
        self.services = net["services"]
        self.roles = net["roles"]
        self.clusters = {}
        self.listeners = []
        self.upstream_policies = {}  # service -> the egress route's timeout and retry policy (client.json)
        self.mesh = mesh_tls.settings(net, host, manifests)  # None when mesh TLS is off

    def build(self):
        if "sidecar" in self.roles:
            self.add_sidecar()
        if "front" in self.roles:
            self.add_front()
        observability = self.net["observability"]
        tracing = observability.get("tracing")
        if tracing:
            self.add_static_cluster("zipkin", tracing["zipkin"]["address"], connect_timeout_ms=1000)
        if any(c.get("eds_service") for c in self.clusters.values()):
            self.add_discovery()
        if self.net["listeners"].get("stats"):
            self.add_stats_listener(self.net["listeners"]["stats"])
        return {
            "node": self.node(),
            "admin": {"address": self.host["admin_address"], "port": self.host["admin_port"]},
            "limits": {key: self.net["listeners"][key] for key in ("max_downstream_connections", "buffer_limit_bytes")},
            "observability": self.observability(observability),
            "listeners": sorted(self.listeners, key=lambda item: item["name"]),
            "clusters": [self.clusters[name] for name in sorted(self.clusters)],
            "upstream_policies": self.upstream_policies,
        }

    # --- node and observability ---------------------------------------------------------------

    def node(self):
        cluster = self.host.get("cluster")
        if not cluster:
            parts = (["front"] if "front" in self.roles else []) + sorted(m.service for m in self.manifests)
            cluster = "+".join(parts) or "envoy"
        node = {"id": self.host["node_id"], "cluster": cluster, "zone": self.host.get("zone")}
        return node

    def observability(self, observability):
        access_log = observability["access_log"]
        log = None
        if access_log["enabled"]:
            fmt = access_log.get("format")
            log = {"path": access_log.get("path") or self.host["log_dir"].rstrip("/") + "/access.log",
                   "format": (fmt if fmt.endswith("\n") else fmt + "\n") if fmt else None}
        tracing = observability.get("tracing")
        return {
            "access_log": log,
            "request_id": observability["request_id"],
            "stats": observability.get("stats"),
            "tracing": {"endpoint": tracing["zipkin"]["endpoint"], "sample_percent": float(tracing["sample_percent"])}
            if tracing else None,
        }

    def add_stats_listener(self, stats):
        """Prometheus reaches /stats/prometheus here, proxied to the admin API on 127.0.0.1; the
        admin API itself (config dumps, POSTs that drain or fail health checks) stays unreachable."""
        self.add_static_cluster("envoy_admin", f"{self.host['admin_address']}:{self.host['admin_port']}",
                                connect_timeout_ms=250)
        self.listeners.append({"kind": "stats", "name": "stats", "address": stats["address"], "port": stats["port"],
                               "direction": "INBOUND", "cluster": "envoy_admin"})

    # --- clusters -----------------------------------------------------------------------------

    def add_static_cluster(self, name, address, connect_timeout_ms):
        host, port = split_host_port(address)
        self.clusters[name] = {
            "name": name, "type": "STATIC" if is_ipv4(host) else "STRICT_DNS",
            "connect_timeout_ms": connect_timeout_ms, "lb_policy": "ROUND_ROBIN", "http2": False,
            "endpoints": [(host, port)], "circuit_breakers": None, "outlier": None, "health_check": None,
            "eds_service": None, "tls": None,
        }

    def add_discovery(self):
        """The `discovery` cluster EDS configs name: the one instance, or with several the retrying
        shape (templates/discovery.yaml.j2): a loopback listener retrying on another instance."""
        addresses = self.discovery["addresses"]
        if len(addresses) == 1:
            self.add_static_cluster("discovery", addresses[0], connect_timeout_ms=1000)
            return
        instances = [split_host_port(address) for address in addresses]
        kind = "STATIC" if all(is_ipv4(host) for host, _ in instances) else "STRICT_DNS"
        port = self.discovery["retry_port"]
        for name in ("discovery", "discovery_instances"):
            self.clusters[name] = {"name": name, "kind": "discovery_fallback" if name == "discovery" else name,
                                   "type": kind, "instances": instances, "retry_port": port}
        # A fetch may try every instance (previous_hosts picks another one for each retry), and one more.
        self.listeners.append({"kind": "discovery_retry", "name": "discovery_retry", "address": "127.0.0.1",
                               "port": port, "retries": len(instances)})

    def add_catalogue_cluster(self, name, settings, circuit_breakers, health=True):
        """One cluster per catalogue service; the endpoints come from the catalogue or from EDS."""
        if name in self.clusters:
            return
        entry = self.services[name]
        upstream = self.defaults["upstreams"]
        lb_policy = entry.get("lb_policy") or upstream["lb_policy"]
        health_check = None
        if health and entry["type"] in HTTP_TYPES and entry.get("health_check", upstream["health_check"]["enabled"]):
            health_check = dict(upstream["health_check"])
            health_check["path"] = entry.get("health_check_path") or health_check["path"]
            # grpc: gRPC's health protocol; http: a GET, over HTTP/2 for an http2 service (Envoy's
            # health checker speaks HTTP/1.1 unless told otherwise, which an h2c-only server refuses).
            health_check["protocol"] = health_check_protocol(entry)
            health_check["http2"] = entry["type"] == "http2"
            health_check["grpc_service"] = entry.get("health_check_grpc_service")
        outlier = upstream["outlier_detection"] if entry["type"] in HTTP_TYPES else None
        eds = entry["discovery"] == "eds"
        self.clusters[name] = {
            "name": name,
            "type": {"static": "STATIC", "strict_dns": "STRICT_DNS", "eds": "EDS"}[entry["discovery"]],
            "connect_timeout_ms": settings["connect_timeout_ms"],
            "lb_policy": "MAGLEV" if entry["type"] == "redis" else lb_policy.upper(),
            "http2": entry["type"] == "http2",
            "endpoints": [] if eds else [split_host_port(h) for h in entry["hosts"]],
            "circuit_breakers": circuit_breakers,
            "outlier": outlier if outlier and outlier["enabled"] else None,
            "health_check": health_check,
            "eds_service": name if eds else None,
            "eds_refresh_ms": upstream["eds_refresh_ms"],
            "tls": mesh_tls.upstream(self.mesh, name, entry),
        }

    def upstream_settings(self, override=None):
        """Pillar defaults for upstreams with a manifest's knobs over them."""
        return merged(self.defaults["upstreams"], override)

    # --- sidecar ------------------------------------------------------------------------------

    def add_sidecar(self):
        egress = self.net["listeners"]["egress"]
        vhosts = []
        for manifest in self.manifests:
            if manifest.data.get("ingress"):
                self.add_ingress(manifest)
            for upstream in manifest.data.get("upstreams") or []:
                vhosts.append(self.egress_vhost(upstream, egress["port"]))
            for database in manifest.data.get("databases") or []:
                self.add_database(manifest, database)
            for cache in manifest.data.get("caches") or []:
                self.add_cache(manifest, cache)
        unique = {vhost["name"]: vhost for vhost in vhosts}  # shared upstreams agree (policy checked)
        hcm = self.hcm("egress", [unique[name] for name in sorted(unique)], edge=False, health_check=None)
        # The local apps are the only callers: Envoy trusts their router headers (timeouts and
        # retries envoy_client sets per call) and tells them why a call failed (response flags).
        hcm["local_callers"] = {"address": egress["address"]}
        self.listeners.append({"kind": "http", "name": "egress", "address": egress["address"], "port": egress["port"],
                               "hcm": hcm, "direction": "OUTBOUND"})

    def egress_vhost(self, upstream, egress_port):
        name = upstream["service"]
        settings = self.upstream_settings(upstream)
        self.add_catalogue_cluster(name, settings, settings["circuit_breakers"])
        action = self.route_action(name, settings)
        self.upstream_policies[name] = {key: action[key] for key in ("timeout_ms", "per_try_timeout_ms", "retries",
                                                                     "retry_on")}
        return {"name": name, "domains": [name, f"{name}:{egress_port}"],
                "routes": [{"name": name, "match": {"kind": "prefix", "value": "/", "headers": []}, "route": action}]}

    def route_action(self, cluster, settings):
        # A long-lived stream is bounded by max_stream_duration (and by a gRPC client's deadline, up to
        # it) and by its idle timeout. The route and per-try timeouts cover a whole response, so they
        # are off for a stream; without max_stream_duration_ms nothing changes for unary calls.
        stream = settings.get("max_stream_duration_ms")
        return {
            "cluster": cluster, "other_hosts": cluster in self.services, "timeout_ms": 0 if stream else settings["timeout_ms"],
            "max_stream_duration_ms": stream, "stream_idle_timeout_ms": settings.get("stream_idle_timeout_ms"),
            "retries": settings["retries"], "retry_on": settings["retry_on"],
            "per_try_timeout_ms": None if stream else settings.get("per_try_timeout_ms"),
            "host_rewrite": settings.get("host_rewrite"), "prefix_rewrite": settings.get("prefix_rewrite"),
        }

    def add_ingress(self, manifest):
        ingress, service = manifest.data["ingress"], manifest.service
        settings = merged(self.defaults["ingress"], ingress)
        local = f"local_{service}"
        self.clusters[local] = {
            "name": local, "type": "STATIC", "connect_timeout_ms": settings["connect_timeout_ms"],
            "lb_policy": "ROUND_ROBIN", "http2": ingress["app_protocol"] == "http2",
            "endpoints": [("127.0.0.1", ingress["app_port"])],
            "circuit_breakers": dict(settings["circuit_breakers"]), "outlier": None, "health_check": None,
            "eds_service": None, "tls": None,
        }
        route = self.route_action(local, {key: settings.get(key) for key in ("timeout_ms", *STREAM_KNOBS)}
                                  | {"retries": settings["connect_retries"], "retry_on": SAFE_RETRY_ON})
        # Health checks pass through to the app; counting them apart (a virtual cluster) leaves the
        # catch-all one, vhost.local_<service>.vcluster.other, counting the service's real requests.
        vhost = {"name": local, "domains": ["*"],
                 "routes": [{"name": local, "match": {"kind": "prefix", "value": "/", "headers": []}, "route": route}],
                 "virtual_clusters": [{"name": "healthcheck", "path": ingress["health_check"]}]}
        mesh = mesh_tls.ingress(self.mesh, service, self.services.get(service)) if self.mesh else None
        if mesh:
            vhost["rbac"] = mesh["rbac"]
        self.listeners.append({
            "kind": "http", "name": f"ingress_{service}", "address": self.net["listeners"]["ingress"]["address"],
            "port": ingress["port"], "direction": "INBOUND",
            "hcm": self.hcm(f"ingress_{service}", [vhost], edge=False,
                            health_check={"path": ingress["health_check"], "pass_through": True}),
            "mesh": mesh,
        })

    def add_database(self, manifest, database):
        name = database["name"]
        settings = merged(self.defaults["databases"], database)
        self.add_catalogue_cluster(name, settings, {"max_connections": settings["max_connections"]}, health=False)
        entry = self.services[name]
        rate = (database.get("rate_limit") or {}).get("connections_per_second")
        self.listeners.append({
            "kind": "database", "name": f"db_{name}", "address": "127.0.0.1", "port": database["listen_port"],
            "direction": "OUTBOUND",
            "cluster": name, "mongo": entry["type"] == "mongo", "connections_per_second": rate,
        })

    def add_cache(self, manifest, cache):
        name = cache["name"]
        settings = merged(self.defaults["caches"], cache)
        self.add_catalogue_cluster(name, settings, None, health=False)
        self.listeners.append({
            "kind": "cache", "name": f"cache_{name}", "address": "127.0.0.1", "port": cache["listen_port"],
            "direction": "OUTBOUND",
            "cluster": name, "op_timeout_ms": settings["op_timeout_ms"],
        })

    # --- front --------------------------------------------------------------------------------

    def add_front(self):
        front = self.net["listeners"]["front"]
        tls = self.net["tls"]
        # A redirect to HTTPS goes to this edge's https_port. Envoy keeps the port the client sent
        # unless told one (port_redirect), except :80 when switching to https; so only the standard
        # pair 80/443 can leave the port out of the Location.
        standard = front["https_port"] == 443 and front["http_port"] == 80
        self.https_redirect_port = None if standard else front["https_port"]
        health_check = {"path": front["health_check"], "pass_through": False}
        self.listeners.append({
            "kind": "http", "name": "front_http", "address": front["address"], "port": front["http_port"], "tls": None,
            "hcm": self.hcm("front_http", self.front_vhosts(plain_http=bool(tls["certificates"])), edge=True,
                            health_check=health_check),
        })
        if tls["certificates"]:
            self.listeners.append({
                "kind": "http", "name": "front_https", "address": front["address"], "port": front["https_port"],
                "tls": {"certificates": self.certificates(tls["certificates"]),
                        "min_version": tls["min_version"], "alpn": tls["alpn"]},
                "hcm": self.hcm("front_https", self.front_vhosts(plain_http=False), edge=True,
                                health_check=health_check),
            })

    @staticmethod
    def certificates(certs):
        # SNI-matched chains first, the default (no server_names) last; Envoy picks by match anyway.
        out = [{"name": c["name"], "server_names": sorted(c.get("server_names", [])),
                "certificate": c["certificate"], "private_key": c["private_key"]} for c in certs]
        return sorted(out, key=lambda c: (not c["server_names"], c["name"]))

    def front_vhosts(self, plain_http):
        """Routes grouped by their domain list; on plain HTTP, https_only routes redirect to HTTPS."""
        groups = {}
        for route in self.net["routes"]:
            groups.setdefault(tuple(route["domains"]), []).append(self.front_route(route, plain_http))
        vhosts = [{"name": "all" if domains == ("*",) else domains[0], "domains": list(domains), "routes": routes}
                  for domains, routes in groups.items()]
        return sorted(vhosts, key=lambda vhost: vhost["name"])

    def front_route(self, route, plain_http):
        match = route["match"]
        kind = next(k for k in ("prefix", "path", "regex") if k in match)
        headers = [{"name": h["name"], "kind": next(k for k in ("exact", "regex", "present") if k in h),
                    "value": h.get("exact", h.get("regex"))} for h in match.get("headers", [])]
        out = {"name": route["name"], "match": {"kind": kind, "value": match[kind], "headers": headers}}
        if plain_http and route["https_only"]:
            out["redirect"] = {"https": True, "port": self.https_redirect_port, "host": None, "path": None,
                               "prefix": None, "code": None}
        elif "redirect" in route:
            redirect = route["redirect"]
            out["redirect"] = {"https": redirect["https"], "port": self.https_redirect_port if redirect["https"] else None,
                               "host": redirect.get("host"), "path": redirect.get("path"),
                               "prefix": redirect.get("prefix"),
                               "code": REDIRECT_CODE_NAMES.get(redirect.get("code"))}
        else:
            name = route["service"]
            settings = self.upstream_settings()
            self.add_catalogue_cluster(name, settings, settings["circuit_breakers"])
            settings = merged(settings, {k: route[k] for k in ("timeout_ms", "retries", "retry_on",
                                                                "per_try_timeout_ms", "host_rewrite",
                                                                "prefix_rewrite", *STREAM_KNOBS) if k in route})
            out["route"] = self.route_action(name, settings)
        return out

    def hcm(self, stat_prefix, vhosts, edge, health_check):
        return {"stat_prefix": stat_prefix, "vhosts": vhosts, "edge": edge, "health_check": health_check,
                "local_callers": None}


def build_model(manifests, net, host, discovery):
    return ModelBuilder(manifests, net, host, discovery).build()
