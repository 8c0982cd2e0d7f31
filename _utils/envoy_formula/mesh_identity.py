"""
This host's mesh identities (docs/mesh-tls.md): which it holds, the SDS files through which Envoy
reads their keys and certificates, proof that Envoy serves what is on disk, and their expiry.

Salt's own x509 states make the keys and get the certificates signed by the CA minion; the CA
certificate comes from the Salt mine. Envoy watches only ``<pki_dir>/sds/``: Salt's x509 states
rename their files into ``pki_dir`` (and fix owner and mode just after), which Envoy does not
see. Once every key and certificate is complete, :func:`publish` renames into ``sds/`` an SDS file
per secret whose ``version_info`` is a digest of the certificate it names; any such rename makes
Envoy re-read every pair and the CA, so a renewed certificate is served without a restart and
never half-written or unreadable.
"""

import datetime
import os
import re

import yaml

from . import admin_api, atomic_files, discovery_registration, mesh_names, processes
from .errors import EnvoyFormulaError

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# The Salt mine alias under which the CA minion publishes its certificate.
MINE_FUNCTION = "envoy_mesh_ca"
CA_DIR = "ca"  # under pki_dir on the CA minion: mesh-ca.key (0600) and mesh-ca.crt
IDENTITY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
CONFIRM_TIMEOUT_S = 15.0


# --- which identities ------------------------------------------------------------------------------

def services(host):
    """The services of this host's manifests (each one an identity)."""
    manifests, _problems = discovery_registration.read_manifests(host["manifest_dir"])
    names = sorted({data["service"] for _path, data, _digest in manifests})
    for name in names:
        if not IDENTITY_NAME.fullmatch(name):
            raise EnvoyFormulaError(f"a manifest in {host['manifest_dir']} names service {name!r}, not a name of "
                                    "lowercase letters, digits, '-' and '_': no mesh identity is issued for it")
    return names


def identities(host):
    """Every identity this host holds, with its files: [] when mesh TLS is off."""
    tls = host["mesh_tls"]
    if tls["mode"] == "off":
        return []
    return [describe(host, name) for name in mesh_names.host_identities(host["roles"], services(host))]


def describe(host, identity):
    pki_dir, tls = host["pki_dir"], host["mesh_tls"]
    secret = mesh_names.secret_name(identity)
    return {"identity": identity, "uri": mesh_names.spiffe_id(tls["trust_domain"], identity),
            "key": mesh_names.key_file(pki_dir, identity), "certificate": mesh_names.cert_file(pki_dir, identity),
            "secret": secret, "sds": mesh_names.sds_file(pki_dir, secret),
            "signing_policy": tls["ca"]["signing_policy"].replace("{identity}", identity)}


# --- the CA ------------------------------------------------------------------------------------------

def ca_files(host):
    """(key, certificate) of the mesh CA on the CA minion."""
    ca_dir = os.path.join(host["pki_dir"], CA_DIR)
    return os.path.join(ca_dir, "mesh-ca.key"), os.path.join(ca_dir, "mesh-ca.crt")


def ca_certificate(host):
    """The CA minion's certificate as PEM (what it publishes in the mine)."""
    path = ca_files(host)[1]
    text = atomic_files.read_text(path)
    if text is None:
        raise EnvoyFormulaError(f"no mesh CA certificate at {path}: apply envoy.identity.ca on this minion")
    return text


def ca_from_mine(answer, ca_minion):
    """The CA certificate (PEM) from ``mine.get <ca_minion> envoy_mesh_ca``, checked to be a CA."""
    pem = (answer or {}).get(ca_minion)
    if not pem:
        raise EnvoyFormulaError(f"the Salt mine has no mesh CA certificate from {ca_minion} (pillar "
                                f"envoy:mesh_tls:ca:minion): apply envoy.identity.ca on {ca_minion} first")
    try:
        facts = read_certificate_text(pem)
    except ValueError as exc:
        raise EnvoyFormulaError(f"the mesh CA certificate {ca_minion} published in the mine does not parse: {exc}") from exc
    if not facts["is_ca"]:
        raise EnvoyFormulaError(f"the certificate {ca_minion} published in the mine is not a CA (basicConstraints)")
    return pem


# --- SDS files -------------------------------------------------------------------------------------

def _digest(path):
    try:
        return atomic_files.sha256_of(path)[:16]
    except OSError as exc:
        raise EnvoyFormulaError(f"{path}: cannot read it ({exc.strerror}); the x509 states must write it first") from exc


def _response(secret, body, version):
    return {"version_info": version, "resources": [{"@type": SECRET_TYPE, "name": secret, **body}]}


def documents(host):
    """{sds file: (secret, version, text)} for the CA and every identity of this host."""
    watched = {"watched_directory": {"path": mesh_names.sds_dir(host["pki_dir"])}}
    ca_path = mesh_names.ca_file(host["pki_dir"])
    wanted = [(mesh_names.CA_SECRET, ca_path,
               {"validation_context": {"trusted_ca": {"filename": ca_path}, **watched}})]
    for entry in identities(host):
        _digest(entry["key"])  # present and readable, or a clear error
        wanted.append((entry["secret"], entry["certificate"], {"tls_certificate": {
            "certificate_chain": {"filename": entry["certificate"]},
            "private_key": {"filename": entry["key"]}, **watched}}))
    out = {}
    for secret, named_file, body in wanted:
        version = _digest(named_file)
        text = ("# Written by Salt (envoy formula): Envoy reads this secret's files through it.\n"
                + yaml.safe_dump(_response(secret, body, version), sort_keys=True))
        out[mesh_names.sds_file(host["pki_dir"], secret)] = (secret, version, text)
    return out


def missing(host):
    """The CA, key and certificate files the SDS files would name that are not on disk yet (on a
    new host under ``test=True``, Salt's x509 states have only said they would write them)."""
    paths = [mesh_names.ca_file(host["pki_dir"])]
    for entry in identities(host):
        paths += [entry["key"], entry["certificate"]]
    return [path for path in paths if not os.path.exists(path)]


def stale(host):
    """{secret: version} whose SDS file differs from what the files on disk call for."""
    return {secret: version for path, (secret, version, text) in documents(host).items()
            if atomic_files.read_text(path) != text}


def publish(host):
    """Rename into ``sds/`` every SDS file that changed; returns {secret: version} written."""
    written = {}
    for path, (secret, version, text) in sorted(documents(host).items()):
        if atomic_files.read_text(path) != text:
            atomic_files.write(path, text, mode=0o644)
            written[secret] = version
    return written


# --- what Envoy serves -----------------------------------------------------------------------------

def served(admin_port):
    """{URI SAN: {serials}} of the certificates Envoy presents, None when it does not answer."""
    try:
        data = admin_api.Admin(admin_port).get_json("/certs", timeout=2)
    except EnvoyFormulaError:
        return None
    out = {}
    for context in data.get("certificates") or []:
        for cert in context.get("cert_chain") or []:
            serial = int(cert.get("serial_number") or "0", 16)
            for san in cert.get("subject_alt_names") or []:
                if "uri" in san:
                    out.setdefault(san["uri"], set()).add(serial)
    return out


def confirm_served(host, written, timeout=CONFIRM_TIMEOUT_S):
    """Problems (empty: fine) with Envoy serving the certificates just published. An identity
    Envoy does not present yet (no config uses it, or Envoy is down) has nothing to confirm."""
    before = served(host["admin_port"])
    if not before:
        return []
    wanted = {}
    for entry in identities(host):
        if entry["secret"] in written and entry["uri"] in before:
            wanted[entry["uri"]] = read_certificate(entry["certificate"])["serial"]

    def all_served():
        now = served(host["admin_port"]) or {}
        return all(now.get(uri) == {serial} for uri, serial in wanted.items())

    if not wanted or processes.wait_for(all_served, timeout, interval=0.05):
        return []
    now = served(host["admin_port"]) or {}
    return [f"envoy still serves {uri} with serial(s) {', '.join(f'{s:x}' for s in sorted(now.get(uri, [])))}, "
            f"not {serial:x} from disk after {timeout:g}s (sds.*.key_rotation_failed counts failed reloads)"
            for uri, serial in sorted(wanted.items()) if now.get(uri) != {serial}]


# --- expiry ------------------------------------------------------------------------------------------

def read_certificate_text(pem):
    """serial, not_after (aware UTC), URI SANs and whether it is a CA; ValueError when it does not parse."""
    from cryptography import x509  # shipped with Salt (its x509 modules need it)

    cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {"serial": cert.serial_number, "not_after": cert.not_valid_after_utc, "uris": uris, "is_ca": is_ca}


def certificate_words(facts):
    """A certificate in a state's comment: its serial and expiry."""
    return f"serial {facts['serial']:x}, valid until {iso(facts['not_after'])}"


def read_certificate(path):
    try:
        with open(path, "rb") as handle:
            return read_certificate_text(handle.read())
    except (OSError, ValueError) as exc:
        raise EnvoyFormulaError(f"{path}: not a readable certificate ({exc})") from exc


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def published_identities(host):
    """The identities whose SDS files are in ``<pki_dir>/sds``: what Envoy was last pointed at,
    whatever the pillar in this minion's memory says (a minion daemon keeps the pillar it had
    before the last highstate until ``saltutil.refresh_pillar``)."""
    prefix = mesh_names.secret_name("")
    try:
        names = os.listdir(mesh_names.sds_dir(host["pki_dir"]))
    except OSError:
        return []
    return sorted(name[len(prefix):-len(".yaml")] for name in names
                  if name.startswith(prefix) and name.endswith(".yaml") and name != f"{mesh_names.CA_SECRET}.yaml"
                  and IDENTITY_NAME.fullmatch(name[len(prefix):-len(".yaml")]))


def certificates(host, admin_up=True):
    """``envoy.status``'s ``certificates``: each identity's expiry and URI, whether Envoy serves
    the certificate on disk, the CA's expiry, and the earliest of them all. The identities are
    those pillar asks for and those Envoy's SDS files name; None when mesh TLS is off and no SDS
    file is left."""
    expected = {entry["identity"]: entry["uri"] for entry in identities(host)}
    names = sorted(set(expected) | set(published_identities(host)))
    if not names and host["mesh_tls"]["mode"] == "off":
        return None
    serving = served(host["admin_port"]) if admin_up else None
    out = {"earliest_expiry": None, "identities": {}, "ca": None,
           "renew_days_remaining": host["mesh_tls"]["renew_days_remaining"]}
    expiries = []
    for identity in names:
        try:
            facts = read_certificate(mesh_names.cert_file(host["pki_dir"], identity))
        except EnvoyFormulaError as exc:
            out["identities"][identity] = {"not_after": None, "uri": expected.get(identity), "error": str(exc)}
            continue
        expiries.append(facts["not_after"])
        uri = facts["uris"][0] if facts["uris"] else None
        out["identities"][identity] = {
            "not_after": iso(facts["not_after"]), "uri": uri, "serial": f"{facts['serial']:x}",
            "served": None if serving is None or uri not in serving else serving[uri] == {facts["serial"]}}
    try:
        ca = read_certificate(mesh_names.ca_file(host["pki_dir"]))
        expiries.append(ca["not_after"])
        out["ca"] = {"not_after": iso(ca["not_after"]), "serial": f"{ca['serial']:x}"}
    except EnvoyFormulaError as exc:
        out["ca"] = {"not_after": None, "error": str(exc)}
    out["earliest_expiry"] = iso(min(expiries)) if expiries else None
    return out
