"""
Files that are never half-written: a temp file in the target's directory, fsynced, given its
mode and owner, then renamed over the target (and the directory fsynced). Readers see the old
file or the new one, never a mix, and a crash leaves at most a temp file behind.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(directory, data, mode=0o644, owner=None, prefix=".tmp-"):
    """A new temp file in ``directory`` holding ``data`` (str or bytes), fsynced, with ``mode``
    and ``owner`` ((uid, gid) or None) set before any byte is written; returns its path."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        if owner:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def replace(tmp, path):
    """Rename ``tmp`` over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write(path, data, mode=0o644, owner=None):
    """Write ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = write_temp(directory, data, mode, owner, prefix=f".{os.path.basename(path)}.")
    try:
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def keep_previous(path, previous):
    """Make ``previous`` a copy of ``path`` (a hard link renamed into place: both steps atomic)."""
    link = f"{previous}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links
        shutil.copy2(path, link)
    os.replace(link, previous)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path, data, mode=0o644):
    write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=mode)


def read_text(path):
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def sha256_of(path):
    """sha256 of a file's bytes; OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_or_none(path):
    try:
        return sha256_of(path)
    except OSError:
        return None
