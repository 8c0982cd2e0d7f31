"""
A change that failed once is not retried blindly: the digest of the inputs Envoy rejected (a
files-mode update it refused, or a config whose new epoch failed) is remembered with Envoy's
reason. A later run with the same inputs fails fast with that reason and touches nothing, until the
inputs change or an operator clears the record (``envoy.clear_rejected``).
"""

import contextlib
import datetime
import os

from . import atomic_files

FILE = ".envoy.rejected.json"


def path(host):
    return os.path.join(host["config_dir"], FILE)


def record(host, inputs, reason):
    if not inputs:
        return
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    os.makedirs(host["config_dir"], exist_ok=True)
    atomic_files.write_json(path(host), {"inputs": inputs, "reason": reason, "at": at})


def last(host):
    """The record of the last refusal ({inputs, reason, at}), or None."""
    try:
        return atomic_files.read_json(path(host))
    except (OSError, ValueError):
        return None


def refused(host, inputs):
    """The record when these very inputs were refused before, else None."""
    try:
        recorded = atomic_files.read_json(path(host))
    except (OSError, ValueError):
        return None
    return recorded if recorded.get("inputs") == inputs else None


def clear(host):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path(host))
        return True
    return False
