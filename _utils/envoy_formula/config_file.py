"""
The config file on disk: written atomically (mode 0640, root and the envoy group when we are root)
only after ``envoy --mode validate`` accepted the very bytes, with the previous config kept as
``<file>.prev`` for rollback, and a stamp of the inputs that rendered it.
"""

import contextlib
import difflib
import grp
import json
import logging
import os

from . import atomic_files, redaction

log = logging.getLogger(__name__)

MODE = 0o640


def previous_path(path):
    return path + ".prev"


def stamp_path(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".inputs.json")


def owner(group):
    """(uid, gid) for the config when root: root and the envoy group, so Envoy can read it."""
    if os.geteuid() != 0:
        return None
    try:
        return 0, grp.getgrnam(group).gr_gid
    except KeyError:
        return 0, 0


def mode_ok(path):
    try:
        return (os.stat(path).st_mode & 0o777) == MODE
    except FileNotFoundError:
        return True


def stamp_matches(path, inputs):
    """The config on disk was rendered from exactly these inputs and still has its mode: nothing to
    render. A hand edit, a rollback or a lost stamp falls through to a real render."""
    try:
        stamp = atomic_files.read_json(stamp_path(path))
    except (OSError, ValueError):
        return False
    return (os.path.exists(path) and mode_ok(path) and stamp.get("inputs") == inputs
            and stamp.get("config_sha256") == atomic_files.sha256_or_none(path))


def write_stamp(path, inputs):
    """Record which inputs rendered the config on disk (a failure only costs a render next time)."""
    try:
        atomic_files.write(stamp_path(path), json.dumps(
            {"inputs": inputs, "config_sha256": atomic_files.sha256_or_none(path)}))
    except OSError as exc:
        log.warning("could not record the config's inputs in %s: %s", stamp_path(path), exc)


def diff(path, old, new):
    """A unified diff from ``old`` to ``new``, private keys redacted."""
    lines = difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=path if old is not None else "/dev/null", tofile=path)
    return redaction.hide_private_keys("".join(lines))


def install(path, text, group, validate):
    """Write ``text`` to ``path`` if ``validate(temp path)`` accepts it: returns the verdict
    ({ok, error}). The file is untouched unless ok."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = atomic_files.write_temp(directory, text, MODE, owner(group), prefix="." + os.path.basename(path) + ".")
    try:
        verdict = validate(tmp)
        if verdict["ok"]:
            if os.path.exists(path):
                atomic_files.keep_previous(path, previous_path(path))
            atomic_files.replace(tmp, path)
        return verdict
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def set_mode(path):
    os.chmod(path, MODE)


def rollback(path):
    """Put ``<path>.prev`` back (atomically); False when there is none."""
    previous = previous_path(path)
    if not os.path.exists(previous):
        return False
    with open(previous, "rb") as handle:
        data = handle.read()
    stat = os.stat(previous)
    atomic_files.write(path, data, mode=stat.st_mode & 0o777, owner=(stat.st_uid, stat.st_gid))
    return True
