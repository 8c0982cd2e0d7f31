"""
``envoy --mode validate`` with the current bundle's envoy, as the user Envoy runs as (when we are
root), so a file that user cannot open fails here and not in a new epoch. It starts nothing and is
safe on a live host.
"""

import errno
import os
import re
import shutil
import subprocess
import tempfile

from . import config_render, privileges, redaction
from .errors import EnvoyFormulaError

TIMEOUT_S = 300
_ERROR_LINE = re.compile(r"^\[[^\]]*\]\[\d+\]\[(?:critical|error)\]\[[^\]]*\] (?:\[[^\]]*\] )?(.*)$")


def envoy_error(output):
    """Envoy's own error lines without the log prefixes (the whole tail when there are none)."""
    lines = [m.group(1) for m in map(_ERROR_LINE.match, output.splitlines()) if m]
    text = "\n".join(lines) if lines else "\n".join(output.strip().splitlines()[-20:])
    return redaction.hide_private_keys(text.strip())


def validate_file(host, source_path):
    """{ok, error}: the config at ``source_path``, copied into a private dir as ``envoy.yaml``
    (Envoy picks the format by extension; the envoy user must be able to read it)."""
    with open(source_path, encoding="utf-8") as handle:
        text = handle.read()
    return validate_tree(host, {"envoy.yaml": text}, None, shown_path=source_path)


def validate_tree(host, files, config_dir, shown_path=None):
    """{ok, error} for a set of config files ({relative path: text}, ``envoy.yaml`` the bootstrap)
    laid out in a private dir as they would be under ``config_dir`` (paths in them rewritten), so
    a bootstrap that points at xDS files is checked with those very files."""
    binary = config_render.bundle_file(host, "bin", "envoy")
    ids = privileges.envoy_ids(host["user"], host["group"])
    workdir = tempfile.mkdtemp(prefix="envoy-validate-")
    try:
        for rel, text in files.items():
            target = os.path.join(workdir, rel)
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
                fh.write(text.replace(config_dir.rstrip("/") + "/", workdir + "/") if config_dir else text)
        path = os.path.join(workdir, "envoy.yaml")
        if ids:
            for top, dirs, names in os.walk(workdir):
                for entry in [top] + [os.path.join(top, n) for n in dirs + names]:
                    os.chown(entry, *ids)
        as_user = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
        try:
            proc = subprocess.run([binary, "--mode", "validate", "--log-level", "error", "-c", path],
                                  capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                                  cwd=workdir, **as_user)
        except PermissionError as exc:
            raise EnvoyFormulaError(
                f"envoy --mode validate as user {host['user']}: cannot execute {binary} ({exc.strerror}); "
                f"every directory above the bundle must be searchable by {host['user']}, or Envoy "
                "could not start either") from exc
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            raise EnvoyFormulaError(f"{binary} is not an executable for this host: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvoyFormulaError(f"envoy --mode validate took more than {TIMEOUT_S}s") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode == 0:
        return {"ok": True, "error": ""}
    error = envoy_error(proc.stderr + "\n" + proc.stdout)
    if shown_path:
        error = error.replace(path, shown_path)
    if config_dir:
        error = error.replace(workdir + "/", config_dir.rstrip("/") + "/")
    return {"ok": False, "error": error}


def validate_text(host, text):
    """{ok, error} for one config given as text (written 0600 into a private temp dir)."""
    return validate_tree(host, {"envoy.yaml": text}, None)
