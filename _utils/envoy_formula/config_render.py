"""
Rendering this host's Envoy config: the current bundle's generator (``bin/envoy-configgen``) runs
as its own process with the host's Python, reading the manifests in ``manifest_dir`` and a JSON
document of pillar ``envoy`` plus host facts on stdin. The generator always comes from the current
bundle, so it never has to stay compatible with another envoy than the one it ships with.
"""

import hashlib
import json
import os
import subprocess
import sys

from . import redaction
from .errors import EnvoyFormulaError

ADMIN_ADDRESS = "127.0.0.1"
TIMEOUT_S = 300
EXIT_BAD_INPUT = 2


def bundle_file(host, *parts):
    """A file of the current bundle; a clear error when no bundle is installed."""
    path = os.path.join(host["current_dir"], *parts)
    if not os.path.exists(path):
        raise EnvoyFormulaError(f"no Envoy bundle is installed: {path} does not exist (apply envoy.bundle first)")
    return path


def bundle_file_exists(host, *parts):
    return os.path.exists(os.path.join(host["current_dir"], *parts))


def renders_files(host):
    """Whether the current bundle's generator writes files mode (JSON output): its outputs module."""
    return bundle_file_exists(host, "lib", "envoy_bundle", "configgen", "outputs.py")


def host_facts(host, node_id, mode=None):
    """What the generator needs to know about this host (docs/manifest.md, "Host facts")."""
    facts = {"node_id": str(node_id or "envoy"), "admin_address": ADMIN_ADDRESS,
             "admin_port": int(host["admin_port"]), "log_dir": host["log_dir"]}
    if mode:  # only a generator that renders modes knows these facts
        facts.update(config_mode=mode, config_dir=host["config_dir"])
    if host.get("mesh_tls", {}).get("mode", "off") != "off":  # nor, before mesh TLS, this one
        facts["pki_dir"] = host["pki_dir"]
    return facts


def _facts_json(pillar, host, node_id, mode=None):
    return json.dumps({"pillar": pillar or {}, "host": host_facts(host, node_id, mode)}, default=str,
                      sort_keys=True)


def render(host, pillar, node_id):
    """The effective config, one static bootstrap (secrets included: callers redact what they
    show). Bad input raises with one line per problem, each naming the file and field."""
    return _run(host, pillar, node_id, None, [])


def render_outputs(host, pillar, node_id, mode):
    """Every file of this host's config in ``mode`` (static or files) and the effective config:
    ``{"mode", "files": {relative path: text}, "effective"}``. A bundle whose generator predates
    modes gives its one static file."""
    if not renders_files(host):
        return {"mode": "static", "files": {"envoy.yaml": render(host, pillar, node_id)}, "effective": None,
                "legacy_generator": True}
    return json.loads(_run(host, pillar, node_id, mode, ["--output", "json"]))


def _generator_env(host):
    """The generator keeps its compiled templates in the run dir (a cache: lost on reboot, checked
    against each template's source, so a new bundle compiles afresh)."""
    return {**os.environ, "ENVOY_CONFIGGEN_CACHE_DIR": os.path.join(host["run_dir"], "configgen-cache")}


def _run(host, pillar, node_id, mode, extra):
    launcher = bundle_file(host, "bin", "envoy-configgen")
    try:
        proc = subprocess.run([sys.executable, launcher, "--manifest-dir", host["manifest_dir"], "--facts", "-", *extra],
                              input=_facts_json(pillar, host, node_id, mode), capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False, env=_generator_env(host))
    except subprocess.TimeoutExpired as exc:
        raise EnvoyFormulaError(f"envoy-configgen took more than {TIMEOUT_S}s") from exc
    stderr = redaction.hide_private_keys(proc.stderr).strip()
    if proc.returncode == EXIT_BAD_INPUT:
        raise EnvoyFormulaError("bad manifest or pillar:\n" + stderr)
    if proc.returncode != 0:
        tail = "\n".join(stderr.splitlines()[-20:])
        raise EnvoyFormulaError(f"envoy-configgen failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def manifest_files(manifest_dir):
    """(name, bytes) of every file in the manifest dir: a superset of what the generator reads."""
    try:
        names = sorted(os.listdir(manifest_dir))
    except FileNotFoundError:
        return []
    files = []
    for name in names:
        path = os.path.join(manifest_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                files.append((name, handle.read()))
    return files


def inputs_digest(host, pillar, node_id, mode=None):
    """sha256 of everything the generator reads: the current release, the manifest files, pillar
    ``envoy``, the host facts and the config mode. The generator is deterministic, so an unchanged
    digest means an unchanged config and the config state skips rendering."""
    digest = hashlib.sha256()
    digest.update(os.path.realpath(host["current_dir"]).encode() + b"\0")
    for name, data in manifest_files(host["manifest_dir"]):
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    digest.update(_facts_json(pillar, host, node_id, mode).encode())
    return digest.hexdigest()
