"""
The names and defaults mesh TLS shares between the formula (which writes the key, certificate and SDS files on
a host) and the config generator in the bundle (which points Envoy at them): one module, so the
two cannot disagree. The bundle ships this package in ``lib/`` beside the generator.

An *identity* is a service name (``spiffe://<trust domain>/service/<name>``) or ``edge`` (the
front role: ``spiffe://<trust domain>/edge``). On a host, under ``pki_dir``:

    mesh-ca.crt                 the mesh CA, trusted for peers (from the Salt mine)
    <identity>.key, .crt        this host's key and certificate for each identity
    sds/mesh_<identity>.yaml    the SDS file Envoy reads the pair through (a DiscoveryResponse)
    sds/mesh_ca.yaml            the SDS file of the trusted CA

Envoy watches ``sds/`` only: a file moved into it makes Envoy re-read every pair, so the formula
moves an SDS file in once the key and certificate beside it are complete, never before.
"""

import re

EDGE = "edge"
CA_FILE = "mesh-ca.crt"
CA_SECRET = "mesh_ca"
SDS_DIR = "sds"
# SPIFFE's trust domain: lowercase letters, digits, dots, dashes and underscores.
TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
MODES = ("off", "permissive", "strict")
# Names that an identity file or secret of a service would collide with.
RESERVED = (EDGE, "mesh-ca", "ca")
# pillar envoy:mesh_tls when it says nothing (docs/pillar.md). Certificates live 30 days and are
# renewed with 10 left: a host whose highstate fails keeps serving for 10 days while the fleet
# report shows its earliest expiry coming.
DEFAULTS = {
    "mode": "off",
    "trust_domain": None,
    "send_tls": None,              # None: true in mode strict, false in permissive
    "ca": {"minion": None, "signing_policy": "envoy_mesh", "days_valid": 3650},
    "days_valid": 30,
    "renew_days_remaining": 10,
}


def mode_of(value):
    """A mode as pillar gives it: YAML 1.1 reads a bare ``mode: off`` as false."""
    return "off" if value is False else value


def spiffe_id(trust_domain, identity):
    if identity == EDGE:
        return f"spiffe://{trust_domain}/{EDGE}"
    return f"spiffe://{trust_domain}/service/{identity}"


def secret_name(identity):
    return f"mesh_{identity}"


def sds_dir(pki_dir):
    return f"{pki_dir.rstrip('/')}/{SDS_DIR}"


def sds_file(pki_dir, secret):
    return f"{sds_dir(pki_dir)}/{secret}.yaml"


def key_file(pki_dir, identity):
    return f"{pki_dir.rstrip('/')}/{identity}.key"


def cert_file(pki_dir, identity):
    return f"{pki_dir.rstrip('/')}/{identity}.crt"


def ca_file(pki_dir):
    return f"{pki_dir.rstrip('/')}/{CA_FILE}"


def host_identities(roles, services):
    """Every identity a host holds: ``edge`` with the front role, and each service of its manifests."""
    return ([EDGE] if "front" in roles else []) + sorted(set(services))


def calling_identity(roles, services):
    """The one identity a host presents when it calls a mesh service: its clusters are shared by
    every local caller (the edge's routes and the apps behind the egress), so the edge identity
    on a front host, else its first service by name; None when it holds none."""
    identities = host_identities(roles, services)
    return identities[0] if identities else None
