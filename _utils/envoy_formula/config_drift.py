"""
Drift: does the config on this host differ from what its inputs (the manifests on disk, pillar,
the current bundle's generator) render now? A hand edit, a manifest dropped since the last
highstate, or a highstate that keeps failing all show up here. Rendering runs the generator, so the
verdict is kept in the run dir and reused while neither the inputs nor the files on disk changed:
a host whose config is steady pays for one render, not one per report.
"""

import hashlib
import os
import time

from . import atomic_files, config_apply, config_files, config_render
from .errors import EnvoyFormulaError

FILE = "report-drift.json"


def _files_key(files):
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0".encode() + hashlib.sha256(files[rel].encode()).digest())
    return digest.hexdigest()


def _verdict(host, pillar, node_id, mode, on_disk):
    try:
        outputs = config_render.render_outputs(host, pillar, node_id, mode)
    except EnvoyFormulaError as exc:  # bad inputs, no bundle: the host cannot converge either
        return {"drift": None, "files": [], "error": " ".join(str(exc).split())[:300]}
    _old, changed = config_apply.comparable(outputs["files"], on_disk)
    return {"drift": bool(changed), "files": changed, "error": None}


def check(host, pillar, node_id, now=None):
    """``{drift: True|False|None, files: [paths that differ], error, checked_at}``; ``drift`` is
    None when the inputs do not render (``error`` says why)."""
    mode = config_apply.resolve_mode(host)
    on_disk = config_files.on_disk(host["config_dir"])
    key = {"inputs": config_render.inputs_digest(host, pillar, node_id, mode), "files": _files_key(on_disk)}
    path = os.path.join(host["run_dir"], FILE)
    try:
        cached = atomic_files.read_json(path)
    except (OSError, ValueError):
        cached = {}
    if cached.get("key") == key:
        return cached["verdict"]
    verdict = {**_verdict(host, pillar, node_id, mode, on_disk), "checked_at": now or time.time()}
    try:
        os.makedirs(host["run_dir"], exist_ok=True)
        atomic_files.write_json(path, {"key": key, "verdict": verdict})
    except OSError:
        pass  # only costs a render next time
    return verdict
