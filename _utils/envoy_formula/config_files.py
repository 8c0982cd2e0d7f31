"""
The set of files that make up a host's config, relative to the config dir: ``envoy.yaml`` (the
bootstrap), in files mode ``xds/lds/listeners.yaml``, ``xds/cds/clusters.yaml`` and
``xds/rds/<route config>/routes.yaml``, and ``client.json`` for envoy_client.

Each is written atomically in its own directory: Envoy sees a watched xDS file only when one is
renamed into place, and never sees half of one. The previous version of each is kept for rollback:
``envoy.yaml.prev`` beside the bootstrap, ``xds.prev/...`` for xDS files (outside the watched
directories, so keeping a copy never triggers a reload).
"""

import contextlib
import os
import shutil

from . import atomic_files, config_file

BOOTSTRAP = "envoy.yaml"
CLIENT = "client.json"
XDS = "xds"
XDS_PREVIOUS = "xds.prev"


def is_xds(rel):
    return rel.startswith(XDS + "/")


def mode_of(rel):
    return 0o644 if rel == CLIENT else config_file.MODE  # the apps read client.json


def owner_of(rel, group):
    return None if rel == CLIENT else config_file.owner(group)


def previous_path(config_dir, rel):
    if rel == BOOTSTRAP:
        return config_file.previous_path(os.path.join(config_dir, rel))
    if is_xds(rel):
        return os.path.join(config_dir, XDS_PREVIOUS, rel[len(XDS) + 1:])
    return None


def read(config_dir, rel):
    return atomic_files.read_text(os.path.join(config_dir, rel))


def on_disk(config_dir):
    """{rel: text} of every config file there is (the bootstrap, xDS files, client.json)."""
    found = {}
    for rel in (BOOTSTRAP, CLIENT):
        text = read(config_dir, rel)
        if text is not None:
            found[rel] = text
    xds_dir = os.path.join(config_dir, XDS)
    for top, _dirs, files in os.walk(xds_dir):
        for name in files:
            if name.endswith(".yaml") and not name.startswith("."):
                rel = os.path.relpath(os.path.join(top, name), config_dir).replace(os.sep, "/")
                found[rel] = read(config_dir, rel)
    return found


def modes_ok(config_dir, rels):
    """Every one of these files that exists has its mode (0640, client.json 0644)."""
    for rel in rels:
        try:
            if os.stat(os.path.join(config_dir, rel)).st_mode & 0o777 != mode_of(rel):
                return False
        except FileNotFoundError:
            continue
    return True


def set_modes(config_dir, rels):
    for rel in rels:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(os.path.join(config_dir, rel), mode_of(rel))


def write(config_dir, rel, text, group):
    """Write one file atomically, keeping its previous version."""
    path = os.path.join(config_dir, rel)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = atomic_files.write_temp(directory, text, mode_of(rel), owner_of(rel, group),
                                  prefix="." + os.path.basename(path) + ".")
    try:
        keep_previous(config_dir, rel)
        atomic_files.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def keep_previous(config_dir, rel):
    path, previous = os.path.join(config_dir, rel), previous_path(config_dir, rel)
    if previous and os.path.exists(path):
        os.makedirs(os.path.dirname(previous), mode=0o755, exist_ok=True)
        atomic_files.keep_previous(path, previous)


def remove(config_dir, rel):
    """Remove one file (keeping it as the previous version) and its directory when empty."""
    path = os.path.join(config_dir, rel)
    if not os.path.exists(path):
        return
    keep_previous(config_dir, rel)
    os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


def put_back(config_dir, rel, text, group):
    """Return a file to ``text`` (None: it did not exist)."""
    if text is None:
        path = os.path.join(config_dir, rel)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))
        return
    write(config_dir, rel, text, group)


def remove_xds(config_dir):
    """Drop the xDS files (a host back in static mode)."""
    for name in (XDS, XDS_PREVIOUS):
        shutil.rmtree(os.path.join(config_dir, name), ignore_errors=True)
