"""
The contract between the restarter (shipped in the bundle, so it may be newer or older than the
formula on a host) and the formula: which files it keeps in the run dir, and the versioned schema
of its status file. Both sides import this module: the bundle carries its own copy of the library.

status.json (``schema_version`` 1)::

    restarter_pid, state (starting|running|stopping|stopped), started_at, updated_at (epoch s),
    install_dir, config, base_id, admin_port, drain_time_s, parent_shutdown_time_s, user,
    epochs: [{epoch, pid, state (starting|live|draining), started_at, binary, bundle_id,
              config_sha256, hot_restart_version, log}],
    live_epoch, live_pid, bundle_id, config_sha256, hot_restart_version (of the live epoch),
    pending_hup, hups, restart_seq,
    last_restart: {seq, hup, kind (cold|crash|hot), epoch, outcome (pending|success|failed|refused),
                   started_at, finished_at, error, exit_code, log_tail, bundle_id, config_sha256},
    hot_restart_blocked (why a hot restart cannot work any more, or null),
    crashes, last_crash, next_start_in_s
"""

import datetime
import json
import os

from .errors import EnvoyFormulaError

SCHEMA_VERSION = 1
STATUS_FILE = "status.json"
PID_FILE = "restarter.pid"
INSTANCE_LOCK_FILE = "restarter.lock"  # held by the running restarter: one per run dir
RESTART_LOCK_FILE = "restart.lock"     # held by the formula: one restart at a time per host
PROCESS_MARK = "envoy-restarter"       # in the restarter's argv (its launcher's name)


def status_path(run_dir):
    return os.path.join(run_dir, STATUS_FILE)


def pid_path(run_dir):
    return os.path.join(run_dir, PID_FILE)


def write(run_dir, data):
    """Replace the status file (a temp file renamed over it; /run is tmpfs, no fsync needed)."""
    path = status_path(run_dir)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({**data, "schema_version": SCHEMA_VERSION}, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def read(run_dir):
    """The status as the restarter last wrote it, {} when there is none (or it is being replaced).
    A status from a restarter with a newer schema is refused with the way out."""
    try:
        with open(status_path(run_dir), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    version = data.get("schema_version", 1)  # restarters before the field wrote version 1's fields
    if version != SCHEMA_VERSION:
        raise EnvoyFormulaError(
            f"{status_path(run_dir)} has schema version {version}, this formula reads {SCHEMA_VERSION}: "
            "the running bundle's restarter is newer than the formula's modules; run saltutil.sync_all")
    return data


def is_restarter(argv, run_dir):
    """Is ``argv`` the restarter of this run dir?"""
    return any(PROCESS_MARK in part for part in argv) and run_dir in argv


def iso(seconds):
    """A time of the status file (epoch seconds) as ISO 8601 UTC; None stays None."""
    if seconds in (None, ""):
        return None
    return datetime.datetime.fromtimestamp(float(seconds), tz=datetime.timezone.utc).isoformat(timespec="seconds")
