"""The pipeline: check every input, check the policy, build the model, render."""

from . import mesh_tls
from .errors import ConfigError, Problems
from .inputs import check_host, check_pillar, parse_manifest, read_manifest_dir
from .model import build_model
from .outputs import client_config, outputs
from .policy import (
    check_manifest_bounds,
    check_manifest_references,
    check_manifest_streams,
    check_manifests_together,
    check_pillar_policy,
    check_ports,
    check_roles_fit,
)
from .render import render
from .schema import INVALID, Where, indexed


def generate(manifests, pillar, host):
    """``manifests``: (path, text) pairs; ``pillar``: the pillar ``envoy`` dict; ``host``: host facts.
    Returns the rendered YAML (the effective static bootstrap); raises ConfigError listing every
    problem found."""
    return _checked_render(manifests, pillar, host)[0]


def generate_outputs(manifests, pillar, host):
    """Every file this host gets, in its config mode (``outputs.outputs``), plus the effective
    static bootstrap to validate."""
    text, model, net, host_facts, overridable = _checked_render(manifests, pillar, host)
    client = client_config(net, model["upstream_policies"], overridable) if "sidecar" in net["roles"] else None
    return outputs(text, host_facts["config_mode"], host_facts.get("config_dir", ""), client)


def _checked_render(manifests, pillar, host):
    problems = Problems()
    host_facts = check_host(host, problems)
    net = check_pillar(pillar, problems)
    overridable = check_pillar_policy(net, problems)
    parsed = [parse_manifest(path, text, problems) for path, text in sorted(manifests)]
    valid = [m for m in parsed if m is not None]
    discovery = net["discovery"]
    for manifest in valid:
        if overridable is not None:
            check_manifest_bounds(manifest, overridable, problems)
        check_manifest_references(manifest, net["services"], discovery, problems)
        check_manifest_streams(manifest, problems)
    check_manifests_together(valid, problems)
    check_roles_fit(valid, net["roles"], problems)
    check_ports(valid, net, host_facts, problems)
    check_front_eds(net, discovery, problems)
    mesh_tls.check(net, host_facts, valid, problems)
    if host_facts is not None and host_facts["config_mode"] == "files" and not host_facts.get("config_dir"):
        Where.host(problems).fail(["config_dir"], "is required for config_mode files (where the xds files go)")
    if problems or host_facts is None or any(v is INVALID for v in net.values()):
        problems.raise_if_any()
        raise ConfigError(["internal: inputs invalid but no problem recorded"])
    model = build_model(valid, net, host_facts, discovery)
    return render(model), model, net, host_facts, overridable


def check_front_eds(net, discovery, problems):
    """Front routes to an eds service need to know where the discovery service is."""
    roles, routes, services = net["roles"], net["routes"], net["services"]
    if discovery is not None or INVALID in (roles, routes, services) or "front" not in roles:
        return
    for index, route in indexed(routes):
        entry = services.get(route.get("service"))
        if entry and entry["discovery"] == "eds":
            Where.pillar(problems).fail(["routes", index, "service"], "is an eds service, but "
                                        "envoy:discovery:address (where Envoy reaches the discovery service) "
                                        "is not set", route["service"])


def generate_from_dir(manifest_dir, pillar, host):
    return generate(read_manifest_dir(manifest_dir), pillar, host)


def generate_outputs_from_dir(manifest_dir, pillar, host):
    return generate_outputs(read_manifest_dir(manifest_dir), pillar, host)
