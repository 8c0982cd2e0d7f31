"""
What a config change changes, said the way an operator thinks of it: routes by name (once, with the
listeners they serve on, not once per listener), listeners, clusters, and certificates by their
fingerprints (never a key), for either config mode.
"""

import copy
import hashlib

import yaml

HCM = "envoy.filters.network.http_connection_manager"
TLS = "envoy.transport_sockets.tls"


def _load(text):
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None


def _resources(text):
    data = _load(text) or {}
    return data.get("resources") or []


def view(files):
    """{listeners, clusters, routes, certificates} of a config given as {rel: text}."""
    bootstrap = _load(files.get("envoy.yaml")) or {}
    static = bootstrap.get("static_resources") or {}
    listeners = list(static.get("listeners") or [])
    clusters = list(static.get("clusters") or [])
    route_configs = []
    for rel, text in files.items():
        kind = rel.split("/")[2] if rel.startswith("xds/") and rel.count("/") >= 3 else None
        if kind == "lds":
            listeners += _resources(text)
        elif kind == "cds":
            clusters += _resources(text)
        elif kind == "rds":
            route_configs += _resources(text)
    out = {"listeners": {}, "clusters": {c["name"]: _plain(c) for c in clusters}, "routes": {}, "certificates": {}}
    for listener in listeners:
        listener = copy.deepcopy(listener)
        for chain in listener.get("filter_chains", []):
            _certificates(chain, out["certificates"])
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typed_config", {})
                if network_filter.get("name") == HCM:
                    if "route_config" in hcm:
                        route_configs.append(hcm.pop("route_config"))
                    hcm.pop("rds", None)  # where routes come from is not a change to the listener
        out["listeners"][listener["name"]] = _plain(listener)
    for route_config in route_configs:
        for vhost in route_config.get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                key = route.get("name") or repr(route.get("match"))
                entry = out["routes"].setdefault(key, {})
                entry[route_config["name"]] = _plain({"domains": vhost.get("domains"), **route})
    return out


def _plain(value):
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        value.pop("@type", None)
    return value


def _fingerprint(text):
    return hashlib.sha256((text or "").encode()).hexdigest()[:12]


def _certificates(chain, found):
    socket = chain.get("transport_socket") or {}
    if socket.get("name") != TLS:
        return
    context = (socket.get("typed_config") or {}).get("common_tls_context") or {}
    for index, cert in enumerate(context.get("tls_certificates") or []):
        name = chain.get("name") or f"chain {index}"
        chain_text = (cert.get("certificate_chain") or {}).get("inline_string")
        key_text = (cert.get("private_key") or {}).get("inline_string")
        found[name] = {"certificate sha256": _fingerprint(chain_text), "private key": _fingerprint(key_text)}


def _compare(kind, old, new):
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            lines.append(f"{kind} {name}: added")
        elif name not in new:
            lines.append(f"{kind} {name}: removed")
        elif old[name] != new[name]:
            lines.append(f"{kind} {name}: changed")
    return lines


def _compare_routes(old, new):
    """One line per route name and kind of change, naming the route configs (listeners) it is in:
    a route served on plain HTTP and HTTPS is one line, not two."""
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, {}), new.get(name, {})
        by_change = {}
        for config in sorted(set(before) | set(after)):
            if before.get(config) == after.get(config):
                continue
            change = "added" if config not in before else "removed" if config not in after else "changed"
            by_change.setdefault(change, []).append(config)
        lines += [f"route {name}: {change} ({', '.join(configs)})" for change, configs in sorted(by_change.items())]
    return lines


def _compare_certificates(old, new):
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None or after is None:
            lines.append(f"certificate {name}: {'added' if before is None else 'removed'}")
            continue
        parts = [f"{field} {before[field]} -> {after[field]}" for field in before if before[field] != after[field]]
        lines.append(f"certificate {name}: " + ", ".join(parts))
    return lines


def summary(old_files, new_files):
    """Lines such as ``route api: changed (front_http, front_https)`` or ``certificate tls_www:
    certificate sha256 1a2b... -> 3c4d...``."""
    old, new = view(old_files), view(new_files)
    return (_compare_routes(old["routes"], new["routes"])
            + _compare("listener", old["listeners"], new["listeners"])
            + _compare("cluster", old["clusters"], new["clusters"])
            + _compare_certificates(old["certificates"], new["certificates"]))
