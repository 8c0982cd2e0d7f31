"""
Mesh TLS between sidecars (docs/mesh-tls.md): the checks no single field can make, and what the
model adds to ingress listeners and to the clusters of mesh services.

Modes (pillar ``envoy:mesh_tls:mode``):

- ``off``: nothing changes.
- ``permissive``: each ingress accepts mTLS (a client certificate from the mesh CA required) and
  plaintext on one port, told apart by the first bytes (tls_inspector); allow lists are only
  reported (RBAC shadow rules). Callers send mTLS when ``send_tls`` is true.
- ``strict``: each ingress accepts mTLS only and enforces allow lists (403 otherwise); callers
  always send mTLS.

Mesh services are the catalogue's http and http2 services (every catalogue address is a
sidecar's ingress). Certificates reach Envoy as SDS files the formula writes (mesh_names).
"""

from envoy_formula import mesh_names

from .policy import HTTP_TYPES
from .schema import INVALID, Where, indexed, known_but_invalid


def check(net, host, manifests, problems):
    """Allow lists, and what a mode other than off needs: a trust domain, a CA, pki_dir."""
    where = Where.pillar(problems)
    _check_callers(net["services"], where)
    tls = net["mesh_tls"]
    if tls in (None, INVALID) or tls["mode"] == "off":
        return
    mode = tls["mode"]
    if "trust_domain" not in tls:
        where.fail(["mesh_tls", "trust_domain"], f"is required for mode {mode}: every identity is "
                   "spiffe://<trust domain>/service/<name> (or .../edge)")
    if not (tls.get("ca") or {}).get("minion"):
        where.fail(["mesh_tls", "ca", "minion"], f"is required for mode {mode}: the minion whose mesh CA "
                   "signs every host's certificates (apply envoy.identity.ca there; docs/mesh-tls.md)")
    if mode == "strict" and tls.get("send_tls") is False:
        where.fail(["mesh_tls", "send_tls"], "cannot be false in mode strict: every ingress then refuses "
                   "plaintext, so callers must send mTLS", False)
    _check_lifetime(tls, where)
    _check_reserved(net["services"], manifests, where, problems)
    if host is not None and not host.get("pki_dir"):
        Where.host(problems).fail(["pki_dir"], f"is required for mesh_tls mode {mode} (where the certificates "
                                  "and their SDS files are)")


def _check_callers(services, where):
    if services in (None, INVALID):
        return
    for name, entry in services.items():
        callers = entry.get("callers")
        if callers is None:
            continue
        path = ["services", name, "callers"]
        if entry["type"] not in HTTP_TYPES:
            where.fail(path, f"applies to http and http2 services (mesh TLS between sidecars), not type {entry['type']}")
            continue
        if not callers and not getattr(callers, "incomplete", False):
            where.fail(path, f"is empty: nothing could call {name}; leave callers out to let every identity of "
                       "the mesh call it")
        seen = set()
        for index, caller in indexed(callers):
            if caller in seen:
                where.fail(path + [index], "is listed twice", caller)
            seen.add(caller)
            if caller != mesh_names.EDGE and caller not in services and not known_but_invalid(services, caller):
                where.fail(path + [index], f"is not an identity of the mesh: {mesh_names.EDGE} (the front role) "
                           "or a service in envoy:services", caller)


def _check_lifetime(tls, where):
    days_valid = tls.get("days_valid", mesh_names.DEFAULTS["days_valid"])
    renew = tls.get("renew_days_remaining", mesh_names.DEFAULTS["renew_days_remaining"])
    if renew >= days_valid:
        field = "renew_days_remaining" if "renew_days_remaining" in tls else "days_valid"
        where.fail(["mesh_tls", field], f"leaves renew_days_remaining ({renew}) not below days_valid ({days_valid}): "
                   "every highstate would renew every certificate", tls.get(field, days_valid))


def _check_reserved(services, manifests, where, problems):
    reserved = ", ".join(mesh_names.RESERVED)
    for name in services if services not in (None, INVALID) else ():
        if name in mesh_names.RESERVED:
            where.fail(["services", name], f"is a name mesh TLS reserves ({reserved}): its identity or files "
                       "would collide with the edge's or the CA's")
    for manifest in manifests:
        if manifest.service in mesh_names.RESERVED:
            Where.manifest(problems, manifest.path).fail(
                ["service"], f"is a name mesh TLS reserves ({reserved})", manifest.service)


# --- the model ------------------------------------------------------------------------------------

def settings(net, host, manifests):
    """What the model needs of mesh TLS on this host, or None when it is off."""
    tls = net["mesh_tls"]
    if tls["mode"] == "off":
        return None
    pki_dir = host["pki_dir"]
    caller = mesh_names.calling_identity(net["roles"], [m.service for m in manifests])
    return {
        "mode": tls["mode"],
        "trust_domain": tls["trust_domain"],
        "send_tls": tls["mode"] == "strict" or bool(tls.get("send_tls")),
        "pki_dir": pki_dir,
        "ca": secret(pki_dir, mesh_names.CA_SECRET),
        "caller": secret(pki_dir, mesh_names.secret_name(caller)) if caller else None,
    }


def secret(pki_dir, name):
    """An SDS secret Envoy reads from a file the formula renames into the watched directory."""
    return {"name": name, "path": mesh_names.sds_file(pki_dir, name), "dir": mesh_names.sds_dir(pki_dir)}


def ingress(mesh, service, entry):
    """The ingress listener's mTLS: its own certificate, the CA, plaintext too (permissive), and
    the allow list as RBAC (enforced in strict, shadow in permissive)."""
    callers = (entry or {}).get("callers")
    rbac = None
    if callers is not None:
        rbac = {"shadow": mesh["mode"] == "permissive",
                "principals": [mesh_names.spiffe_id(mesh["trust_domain"], caller) for caller in callers]}
    return {"certificate": secret(mesh["pki_dir"], mesh_names.secret_name(service)), "ca": mesh["ca"],
            "plaintext": mesh["mode"] == "permissive", "rbac": rbac}


def upstream(mesh, service, entry):
    """A mesh service's cluster: present this host's identity, accept only the service meant."""
    if mesh is None or not mesh["send_tls"] or entry["type"] not in HTTP_TYPES:
        return None
    return {"certificate": mesh["caller"], "ca": mesh["ca"],
            "peer": mesh_names.spiffe_id(mesh["trust_domain"], service),
            "alpn": "h2" if entry["type"] == "http2" else "http/1.1"}
