"""
The network team's policy and the cross-checks no single field can make: knobs within bounds,
upstreams that exist in the catalogue, unique names, ports that do not collide, routes that make
sense. Every check reports through ``Where`` and keeps going, so one run lists every problem.
"""

import re

from .schema import INVALID, Where, indexed, known_but_invalid
from .specs import BUILTIN_OVERRIDABLE, MANIFEST, MANIFEST_SECTIONS, STREAM_KNOBS, tunable_paths

HTTP_TYPES = ("http", "http2")
DATABASE_TYPES = ("mongo", "tcp")
REDIRECT_CODES = (301, 302, 303, 307, 308)
RESERVED_CLUSTERS = ("discovery", "discovery_instances", "zipkin", "envoy_admin")


def dig(tree, path):
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree


# --- pillar -----------------------------------------------------------------------------------

def effective_overridable(pillar_value, problems):
    """Pillar sections replace the built-in ones section by section; each bound needs min <= max."""
    if pillar_value is INVALID:
        return None
    merged = dict(BUILTIN_OVERRIDABLE)
    merged.update(pillar_value or {})
    where = Where.pillar(problems)
    ok = True
    for section in MANIFEST_SECTIONS:
        for path in tunable_paths(MANIFEST.fields[section].spec):
            bounds = dig(merged.get(section), path)
            if bounds and bounds["min"] > bounds["max"]:
                where.fail(["overridable", section, *path, "min"],
                           f"is above envoy:overridable:{section}:{':'.join(path)}:max ({bounds['max']})",
                           bounds["min"])
                ok = False
    return merged if ok else None


def check_roles(roles, problems):
    if roles in (None, INVALID):
        return
    where = Where.pillar(problems)
    if not roles:
        where.fail(["roles"], "must name at least one role: sidecar, front")
    for index, role in indexed(roles):
        if role in roles[:index]:
            where.fail(["roles", index], "is listed twice", role)


def check_catalogue(services, problems):
    if services in (None, INVALID):
        return
    where = Where.pillar(problems)
    for name, entry in services.items():
        path = ["services", name]
        if name in RESERVED_CLUSTERS or name.startswith("local_"):
            where.fail(path, "is reserved for the formula's own clusters (discovery, discovery_instances, zipkin, "
                             "envoy_admin, local_*)")
        hosts = entry.get("hosts")
        if entry["discovery"] == "eds":
            if hosts:
                where.fail(path + ["hosts"], "must not be set: endpoints of an eds service come from discovery")
        elif not hosts:
            where.fail(path + ["hosts"], f"is required for discovery {entry['discovery']} (a list of host:port)")
        elif entry["discovery"] == "static":
            for index, host in indexed(hosts):
                if not re.fullmatch(r"[0-9.]+:[0-9]+", host):
                    where.fail(path + ["hosts", index],
                               "must be an IPv4 address with a port for discovery static "
                               "(use discovery: strict_dns for DNS names)", host)
        if entry["type"] not in HTTP_TYPES:
            for key in ("health_check", "health_check_protocol", "health_check_path", "health_check_grpc_service"):
                if key in entry:
                    where.fail(path + [key], f"applies to http services only, not type {entry['type']}")
        else:
            _check_health_check_protocol(name, entry, path, where)


def health_check_protocol(entry):
    """How an http/http2 catalogue service is health checked: grpc by default for http2 (a gRPC
    server answers gRPC's health protocol, not an HTTP/1.1 GET), http otherwise."""
    return entry.get("health_check_protocol") or ("grpc" if entry["type"] == "http2" else "http")


def _check_health_check_protocol(name, entry, path, where):
    protocol = health_check_protocol(entry)
    if entry.get("health_check_protocol") == "grpc" and entry["type"] != "http2":
        where.fail(path + ["health_check_protocol"], f"needs type http2 (gRPC runs over HTTP/2); {name} is "
                   f"type {entry['type']}", "grpc")
    if protocol == "grpc" and "health_check_path" in entry:
        how = "the default for http2 services" if "health_check_protocol" not in entry else "health_check_protocol"
        where.fail(path + ["health_check_path"], f"applies to health_check_protocol http, but {name} is checked "
                   f"with gRPC's health protocol ({how}); set health_check_protocol: http for a GET of this "
                   "path over HTTP/2, or leave the path out", entry["health_check_path"])
    if protocol == "http" and "health_check_grpc_service" in entry:
        where.fail(path + ["health_check_grpc_service"], f"applies to health_check_protocol grpc, but {name} is "
                   "checked with an HTTP GET", entry["health_check_grpc_service"])


def check_routes(routes, services, tls, problems):
    if routes in (None, INVALID):
        return
    where = Where.pillar(problems)
    names, domain_groups = {}, {}
    # When envoy:tls itself is broken (already reported), whether there will be a certificate is
    # unknown: saying "needs a certificate" would only be a consequence of that first problem.
    has_certs = None if tls is INVALID else bool(tls and tls["certificates"])
    if tls not in (None, INVALID) and not tls["certificates"] and getattr(tls["certificates"], "incomplete", False):
        has_certs = None
    for index, route in indexed(routes):
        path = ["routes", index]
        if route["name"] in names:
            where.fail(path + ["name"], f"is also the name of envoy:routes[{names[route['name']]}]", route["name"])
        names.setdefault(route["name"], index)
        group = tuple(route["domains"])
        for domain_index, domain in indexed(group):
            if ":" in domain:
                where.fail(path + ["domains", domain_index], "has a port, but front listeners match a route's "
                           "domains whatever port the client used (the port of the Host header is ignored): "
                           f"list {domain.rsplit(':', 1)[0]} without the port", domain)
            other = domain_groups.setdefault(domain, group)
            if other != group:
                where.fail(path + ["domains"], f"puts {domain} in two different domain lists "
                           f"({', '.join(other)} and {', '.join(group)}); list each domain with one set")
        _check_route_target(route, path, services, where)
        _check_route_match(route, path, where)
        _check_stream_knobs(route, path, where, "route")
        if route["https_only"] and has_certs is False:
            where.fail(path + ["https_only"], "needs a certificate in envoy:tls:certificates")
        if route.get("redirect", {}).get("https") and has_certs is False:
            where.fail(path + ["redirect", "https"], "needs a certificate in envoy:tls:certificates")
    _check_shadowed_routes(routes, where)


def _check_stream_knobs(item, path, where, what):
    """A stream is bounded by max_stream_duration_ms (and stream_idle_timeout_ms); the route timeout
    and the per-try timeout measure a whole response, so they would cut it: never both."""
    if "max_stream_duration_ms" not in item:
        return
    for key in ("timeout_ms", "per_try_timeout_ms"):
        if key in item:
            where.fail(path + [key], f"cannot be set with max_stream_duration_ms on the same {what}: a "
                       f"{key.removesuffix('_ms').replace('_', ' ')} covers the whole response, so it would cut "
                       "the stream; a stream is bounded by max_stream_duration_ms (and a gRPC client's deadline, "
                       "up to that) and stream_idle_timeout_ms", item[key])


def _check_shadowed_routes(routes, where):
    """Routes match in order within one domain list (one virtual host): a route that an earlier one
    always beats can never match. Regex matches cannot be judged and are left alone, except that
    nothing comes after a plain `prefix: /`."""
    groups = {}
    for index, route in indexed(routes):
        earlier_routes = groups.setdefault(tuple(route["domains"]), [])
        for earlier_index, earlier in earlier_routes:
            reason = _covers(earlier["match"], route["match"])
            if reason:
                where.fail(["routes", index, "match"], f"of route {route['name']} can never match: "
                           f"envoy:routes[{earlier_index}] ({earlier['name']}) comes first for the same domains "
                           f"and {reason}; list the more specific route first")
                break
        earlier_routes.append((index, route))


def _covers(earlier, later):
    """Why every request ``later`` matches is matched by ``earlier`` too, or None."""
    def headers(match):
        return [{**h, "name": h["name"].lower()} for h in match.get("headers", [])]

    later_headers = headers(later)
    if any(header not in later_headers for header in headers(earlier)):
        return None  # earlier asks for a header later does not: some requests reach later
    if "prefix" in earlier:
        prefix = earlier["prefix"]
        if prefix == "/":
            kind = next(k for k in ("prefix", "path", "regex") if k in later)
            return f"its prefix / matches every path, {kind} {later[kind]} included"
        for kind in ("prefix", "path"):
            if kind in later and later[kind].startswith(prefix):
                return f"its prefix {prefix} covers {kind} {later[kind]}"
    elif "path" in earlier and later.get("path") == earlier["path"]:
        return f"matches the same path {earlier['path']}"
    return None


def _check_route_target(route, path, services, where):
    if "redirect" in route:
        for key in ("timeout_ms", "retries", "retry_on", "per_try_timeout_ms", "host_rewrite", "prefix_rewrite",
                    *STREAM_KNOBS):
            if key in route:
                where.fail(path + [key], "applies to routes to a service, not to redirects")
        redirect = route["redirect"]
        if "path" in redirect and "prefix" in redirect:
            where.fail(path + ["redirect"], "sets both path and prefix: choose one")
        if redirect["https"] and not any(key in redirect for key in ("host", "path", "prefix")):
            where.fail(path + ["redirect", "https"], "redirects every HTTPS request of this route to the same "
                       "URL (a loop on the HTTPS listener); to send plain HTTP to HTTPS, set https_only: true "
                       "on the route that serves this path")
        if "code" in redirect and redirect["code"] not in REDIRECT_CODES:
            where.fail(path + ["redirect", "code"], "must be one of " + ", ".join(map(str, REDIRECT_CODES)),
                       redirect["code"])
        return
    if services in (None, INVALID):
        return
    entry = services.get(route["service"])
    if entry is None and known_but_invalid(services, route["service"]):
        return  # its catalogue entry is reported already
    if entry is None:
        where.fail(path + ["service"], "is not in the service catalogue envoy:services", route["service"])
    elif entry["type"] not in HTTP_TYPES:
        where.fail(path + ["service"], f"is a {entry['type']} service; routes go to http or http2 services",
                   route["service"])


def _check_route_match(route, path, where):
    patterns = [(["match", "regex"], route["match"].get("regex"))]
    for index, header in indexed(route["match"].get("headers", [])):
        patterns.append((["match", "headers", index, "regex"], header.get("regex")))
    for field, pattern in patterns:
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            where.fail(path + field, f"is not a valid regular expression: {exc}", pattern)


def check_tls(tls, problems):
    if tls in (None, INVALID):
        return
    where = Where.pillar(problems)
    names, server_names, defaults = set(), {}, []
    for index, cert in indexed(tls["certificates"]):
        path = ["tls", "certificates", index]
        if cert["name"] in names:
            where.fail(path + ["name"], "is used by another certificate", cert["name"])
        names.add(cert["name"])
        if not cert.get("server_names"):
            defaults.append(cert["name"])
        for server_name in cert.get("server_names", []):
            if server_name in server_names:
                where.fail(path + ["server_names"], f"lists {server_name}, already served by certificate "
                           f"{server_names[server_name]}")
            server_names.setdefault(server_name, cert["name"])
    if len(defaults) > 1:
        where.fail(["tls", "certificates"], "has more than one certificate without server_names "
                   f"({', '.join(defaults)}); only one can be the default")


def check_pillar_policy(net, problems):
    check_roles(net["roles"], problems)
    check_catalogue(net["services"], problems)
    check_routes(net["routes"], net["services"], net["tls"], problems)
    check_tls(net["tls"], problems)
    return effective_overridable(net["overridable"], problems)


# --- manifests ----------------------------------------------------------------------------------

def check_manifest_bounds(manifest, overridable, problems):
    """Every knob a manifest sets must be one the network team lets services turn, within its bounds."""
    where = Where.manifest(problems, manifest.path)
    for section in MANIFEST_SECTIONS:
        value = manifest.data.get(section)
        if not value:
            continue
        items = list(indexed(value)) if isinstance(value, list) else [(None, value)]
        allowed = overridable.get(section) or {}
        for index, item in items:
            prefix = [section] if index is None else [section, index]
            for path in tunable_paths(MANIFEST.fields[section].spec):
                setting = dig(item, path)
                if setting is None:
                    continue
                _check_bound(where, prefix + list(path), setting, dig(allowed, path), section, allowed)


def _check_bound(where, field, value, bounds, section, allowed):
    if not bounds:
        names = [".".join(p) for p in tunable_paths(MANIFEST.fields[section].spec) if dig(allowed, p)]
        where.fail(field, f"is not overridable by services; the network team allows in {section}: "
                   f"{', '.join(names) or 'nothing'}", value)
    elif value < bounds["min"]:
        where.fail(field, f"is below the network team's minimum {bounds['min']}", value)
    elif value > bounds["max"]:
        where.fail(field, f"is above the network team's maximum {bounds['max']}", value)


def check_manifest_references(manifest, services, discovery, problems):
    """Upstreams, databases and caches must name catalogue entries of the right type, once each."""
    where = Where.manifest(problems, manifest.path)
    wanted = (("upstreams", "service", HTTP_TYPES), ("databases", "name", DATABASE_TYPES),
              ("caches", "name", ("redis",)))
    for section, key, types in wanted:
        seen = {}
        for index, item in indexed(manifest.data.get(section) or []):
            name, path = item[key], [section, index, key]
            if name in seen:
                where.fail(path, f"is listed twice in {section} (also {section}[{seen[name]}])", name)
                continue
            seen[name] = index
            if services in (None, INVALID):
                continue
            entry = services.get(name)
            if entry is None and known_but_invalid(services, name):
                continue  # its catalogue entry is reported already
            if entry is None:
                where.fail(path, "is not in the service catalogue envoy:services", name)
            elif entry["type"] not in types:
                where.fail(path, f"is a {entry['type']} service in envoy:services; {section} need "
                           + " or ".join(types), name)
            elif item.get("type") and item["type"] != entry["type"]:
                where.fail([section, index, "type"], f"disagrees with envoy:services:{name}:type "
                           f"({entry['type']})", item["type"])
            elif entry["discovery"] == "eds" and discovery is None:
                where.fail(path, f"uses eds service {name}, but pillar envoy:discovery:address "
                           "(where Envoy reaches the discovery service) is not set", name)


def check_manifest_streams(manifest, problems):
    """Stream knobs replace the route timeout: a manifest may not ask for both on one upstream or ingress."""
    where = Where.manifest(problems, manifest.path)
    ingress = manifest.data.get("ingress")
    if ingress:
        _check_stream_knobs(ingress, ["ingress"], where, "ingress")
    for index, upstream in indexed(manifest.data.get("upstreams") or []):
        _check_stream_knobs(upstream, ["upstreams", index], where, "upstream")


# --- the host as a whole --------------------------------------------------------------------------

def check_manifests_together(manifests, problems):
    """Two manifests may not claim the same service, database or cache, nor disagree on an upstream."""
    owners = {}
    for manifest in manifests:
        where = Where.manifest(problems, manifest.path)
        claims = [("service", manifest.service, ["service"])]
        claims += [(section, item["name"], [section, i, "name"])
                   for section in ("databases", "caches") for i, item in indexed(manifest.data.get(section) or [])]
        for kind, name, path in claims:
            first = owners.setdefault((kind, name), manifest.path)
            if first != manifest.path:
                where.fail(path, f"is also declared by manifest {first}; each {kind} once per host", name)
    _check_shared_upstreams(manifests, problems)


def _check_shared_upstreams(manifests, problems):
    # One egress virtual host and one cluster per upstream service: every local service that
    # calls it must ask for the same settings.
    first = {}
    for manifest in manifests:
        for index, item in indexed(manifest.data.get("upstreams") or []):
            seen = first.setdefault(item["service"], (manifest.path, item))
            if seen[1] != item and seen[0] != manifest.path:  # same file: reported as listed twice
                Where.manifest(problems, manifest.path).fail(
                    ["upstreams", index], f"asks for other settings for {item['service']} than manifest "
                    f"{seen[0]}; services on one host share one cluster per upstream, so they must agree")


def check_roles_fit(manifests, roles, problems):
    if roles in (None, INVALID) or "sidecar" in roles:
        return
    for manifest in manifests:
        Where.manifest(problems, manifest.path).fail(
            [], f"needs the sidecar role, but this host's envoy:roles are {', '.join(roles) or 'empty'}")


def uses_eds(manifests, net):
    """Whether this host gets any cluster from discovery (and so the discovery listener and clusters)."""
    services, roles, routes = net["services"], net["roles"], net["routes"]
    if INVALID in (services, roles) or services is None or roles is None:
        return False
    names = set()
    if "sidecar" in roles:
        for manifest in manifests:
            for section, key in (("upstreams", "service"), ("databases", "name"), ("caches", "name")):
                names.update(item[key] for item in manifest.data.get(section) or [])
    if "front" in roles and routes not in (None, INVALID):
        names.update(route.get("service") for route in routes)
    return any((services.get(name) or {}).get("discovery") == "eds" for name in names if name)


def check_ports(manifests, net, host, problems):
    """No two listeners (nor a listener and a local app, nor the admin API) on one port."""
    claims = []  # (port, where, field path)
    if host is not None:
        claims.append((host["admin_port"], Where.host(problems), ["admin_port"]))
    listeners, roles, tls, discovery = net["listeners"], net["roles"], net["tls"], net["discovery"]
    pillar = Where.pillar(problems)
    if listeners not in (None, INVALID) and roles not in (None, INVALID):
        if "sidecar" in roles:
            claims.append((listeners["egress"]["port"], pillar, ["listeners", "egress", "port"]))
        if "front" in roles:
            claims.append((listeners["front"]["http_port"], pillar, ["listeners", "front", "http_port"]))
            if tls not in (None, INVALID) and tls["certificates"]:
                claims.append((listeners["front"]["https_port"], pillar, ["listeners", "front", "https_port"]))
        if listeners.get("stats"):
            claims.append((listeners["stats"]["port"], pillar, ["listeners", "stats", "port"]))
    for manifest in manifests:
        where = Where.manifest(problems, manifest.path)
        ingress = manifest.data.get("ingress")
        if ingress:
            claims.append((ingress["port"], where, ["ingress", "port"]))
            claims.append((ingress["app_port"], where, ["ingress", "app_port"]))
        for section in ("databases", "caches"):
            for index, item in indexed(manifest.data.get(section) or []):
                claims.append((item["listen_port"], where, [section, index, "listen_port"]))
    # Last, so a collision names this port (chosen fleet-wide) rather than the host's own.
    if discovery not in (None, INVALID) and len(discovery["addresses"]) > 1 and uses_eds(manifests, net):
        claims.append((discovery["retry_port"], pillar, ["discovery", "retry_port"]))
    taken = {}
    for port, where, path in claims:
        if port in taken:
            first_where, first_path = taken[port]
            owner = first_where.prefix + first_where.field(first_path)
            where.fail(path, f"collides with {owner} (one port, one listener)", port)
        else:
            taken[port] = (where, path)
