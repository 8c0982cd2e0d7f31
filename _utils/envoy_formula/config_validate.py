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
    binary = config_render.bundle_file(host, "bin", "envoy")
    ids = privileges.envoy_ids(host["user"], host["group"])
    workdir = tempfile.mkdtemp(prefix="envoy-validate-")
    try:
        path = os.path.join(workdir, "envoy.yaml")
        shutil.copyfile(source_path, path)
        os.chmod(path, 0o600)
        if ids:
            os.chown(workdir, *ids)
            os.chown(path, *ids)
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
    return {"ok": False, "error": error.replace(path, source_path)}


def validate_text(host, text):
    """{ok, error} for a config given as text (written 0600 into a private temp dir)."""
    workdir = tempfile.mkdtemp(prefix="envoy-render-")
    try:
        path = os.path.join(workdir, "envoy.yaml")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            handle.write(text)
        return validate_file(host, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
