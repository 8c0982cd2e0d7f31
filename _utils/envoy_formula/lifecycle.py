"""
Envoy's lifecycle on a host: start, stop, hot restart (SIGHUP to the restarter), drained full
restart, and ``reload`` (whichever of these the current bundle and config need), one at a time per
host under a lock, with the previous config put back when a new epoch fails.
"""

import contextlib
import fcntl
import logging
import os
import re
import signal
import subprocess
import time

from . import (
    admin_api,
    atomic_files,
    config_file,
    preflight,
    processes,
    rejected_inputs,
    restarter_status,
    supervisor,
)
from .errors import EnvoyFormulaError

log = logging.getLogger(__name__)


def _status(host):
    return restarter_status.read(host["run_dir"])


def _admin(host):
    return admin_api.Admin(host["admin_port"])


# --- one restart at a time ---------------------------------------------------------------------


def lock_timeout(host):
    timing = host["restart"]
    return (timing["live_timeout_s"] + timing["parent_shutdown_time_s"] + timing["full_restart_drain_s"]
            + 2 * timing["stop_timeout_s"] + 30)


@contextlib.contextmanager
def restart_lock(host, timeout=None):
    """An fcntl lock in run_dir; yields True when another run held it and we waited."""
    timeout = lock_timeout(host) if timeout is None else timeout
    os.makedirs(host["run_dir"], exist_ok=True)
    path = os.path.join(host["run_dir"], restarter_status.RESTART_LOCK_FILE)
    with open(path, "a+") as handle:
        waited = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                if time.monotonic() >= deadline:
                    raise EnvoyFormulaError(f"another run holds the restart lock {path} for more than "
                                            f"{timeout:g}s") from None
                time.sleep(0.1)
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- start and stop --------------------------------------------------------------------------


def _wait_first_epoch(host, restarter, after_seq=0):
    """After a start: (True, None) once an epoch is LIVE, or (False, why). Only failures of attempts
    after ``after_seq`` count; a backed-off retry is waited for."""
    live_timeout = host["restart"]["live_timeout_s"]

    def settled():
        if not processes.alive(restarter):
            return "exited"
        recorded = _status(host)
        if recorded.get("restarter_pid") != restarter:
            return None
        if recorded.get("live_epoch") is not None:
            return "live"
        last = recorded.get("last_restart") or {}
        return "failed" if last.get("outcome") == "failed" and last.get("seq", 0) > after_seq else None

    retry_in = _status(host).get("next_start_in_s") or 0
    outcome = processes.wait_for(settled, live_timeout + 10 + retry_in)
    if outcome == "live":
        return True, None
    if outcome == "failed":
        return False, (_status(host).get("last_restart") or {}).get("error")
    if outcome == "exited":
        return False, "the restarter exited: " + processes.tail(supervisor.restarter_log(host)).strip()
    return False, f"envoy not LIVE after {live_timeout + 10:g}s"


def start_locked(host, wait=True):
    pid = supervisor.restarter_pid(host)
    if pid:
        ret = {"result": True, "started": False, "restarter_pid": pid, "supervisor": host["supervisor"],
               "comment": f"the restarter already runs (pid {pid})", "epoch": _status(host).get("live_epoch")}
        if wait and ret["epoch"] is None:  # it runs, but is Envoy LIVE? (a crash loop is not)
            last = _status(host).get("last_restart") or {}
            seq = last.get("seq", 0) - (1 if last.get("outcome") == "pending" else 0)
            ok, error = _wait_first_epoch(host, pid, after_seq=seq)
            ret.update(result=ok, error=error, epoch=_status(host).get("live_epoch"))
            if not ok:
                ret["comment"] += f", but no envoy epoch is LIVE: {error}"
        return ret
    left = supervisor.orphans(host)
    if left:
        log.warning("envoy: stopping epochs %s left without a restarter", left)
        processes.terminate(left, host["restart"]["stop_timeout_s"])
    preflight.check_shared_memory(host)
    pid = supervisor.launch(host)
    ret = {"result": True, "started": True, "restarter_pid": pid, "supervisor": host["supervisor"],
           "orphans_stopped": left}
    if wait:
        ok, error = _wait_first_epoch(host, pid)
        ret.update(result=ok, error=error, epoch=_status(host).get("live_epoch"))
    return ret


def start(host, wait=True):
    """Start the supervisor unless it runs (stopping epochs a killed restarter left behind first);
    with ``wait``, return once epoch 0 is LIVE or has failed."""
    with restart_lock(host):
        return start_locked(host, wait=wait)


def stop_locked(host):
    pid, left = supervisor.shut_down(host)
    return {"result": True, "stopped": pid is not None, "restarter_pid": pid, "orphans_stopped": left}


def stop(host):
    """Stop the supervisor and every envoy epoch (SIGTERM, SIGKILL after the stop timeout)."""
    with restart_lock(host):
        return stop_locked(host)


def drain_then_stop(host, drain_s=None):
    """Leave without dropping a request: fail the health check, so load balancers and the Envoys
    that health-check this host stop sending to it, let ``drain_s`` pass (default: the restart
    setting full_restart_drain_s), then stop. Returns the stop result with the ``steps`` taken."""
    drain_s = host["restart"]["full_restart_drain_s"] if drain_s is None else drain_s
    with restart_lock(host):
        steps = _drain(host, drain_s) if supervisor.restarter_pid(host) else []
        out = stop_locked(host)
    out["steps"] = steps + ["stopped"]
    return out


def _drain(host, drain_s):
    """Fail the health check and wait ``drain_s``: callers' health checks take this host out."""
    steps = []
    try:
        _admin(host).post("/healthcheck/fail")
        steps.append("healthcheck failed")
        time.sleep(drain_s)
        steps.append(f"drained {drain_s:g}s")
    except EnvoyFormulaError as exc:
        steps.append(f"no drain ({exc})")
    return steps


# --- restarts ------------------------------------------------------------------------------


def _send_hup(host, pid):
    """SIGHUP the restarter and wait for the attempt that covers it; returns its last_restart."""
    before = _status(host).get("hups", 0)
    os.kill(pid, signal.SIGHUP)
    counted = processes.wait_for(lambda: (_status(host).get("hups") or 0) > before and _status(host), 10)
    if not counted:
        raise EnvoyFormulaError(f"the restarter (pid {pid}) did not acknowledge SIGHUP within 10s")
    hup = counted["hups"]

    def finished():
        if not processes.alive(pid):
            return {"outcome": "failed", "error": "the restarter exited during the hot restart"}
        last = _status(host).get("last_restart") or {}
        if (last.get("hup") or 0) >= hup and last.get("outcome") in ("success", "failed", "refused"):
            return last
        return None

    timing = host["restart"]
    # A parent still draining defers the HUP for up to its shutdown time.
    timeout = timing["parent_shutdown_time_s"] + timing["live_timeout_s"] + 15
    last = processes.wait_for(finished, timeout)
    if not last:
        raise EnvoyFormulaError(f"no outcome for the hot restart after {timeout:g}s")
    return last


# A parent about to exit is waited for (the restart then reports its own outcome); one that drains
# longer (an edge drains for minutes) gets the restart queued behind it instead.
WAIT_FOR_DRAIN_S = 15.0


def draining_epoch(recorded):
    """The epoch still draining after an earlier hot restart, or None."""
    return next((e for e in recorded.get("epochs", []) if e.get("state") == "draining"), None)


def _queue_hup(host, pid, draining):
    """A parent still drains: the restarter starts the next epoch once it is gone (a third epoch
    now would make Envoy end it, cutting the requests it still serves). Queue it and return."""
    before = _status(host).get("hups", 0)
    os.kill(pid, signal.SIGHUP)
    if not processes.wait_for(lambda: (_status(host).get("hups") or 0) > before, 10):
        raise EnvoyFormulaError(f"the restarter (pid {pid}) did not acknowledge SIGHUP within 10s")
    recorded = _status(host)
    # Nobody waits for this restart: the next run settles it (settle()).
    atomic_files.write_json(_queued_path(host), {"hup": recorded.get("hups")})
    until = restarter_status.iso(draining.get("drain_ends_at")) or "its parent shutdown time"
    return {"result": True, "kind": "hot", "outcome": "queued", "epoch": recorded.get("live_epoch"),
            "error": None, "exit_code": None, "duration_s": 0.0,
            "comment": (f"queued: epoch {recorded.get('live_epoch', 0) + 1} starts with this config once epoch "
                        f"{draining.get('epoch')} has drained (by {until}); until then Envoy serves epoch "
                        f"{recorded.get('live_epoch')} on the previous config")}


def hot_restart_locked(host):
    pid = supervisor.restarter_pid(host)
    if not pid:
        raise EnvoyFormulaError("the envoy restarter is not running (envoy.start first)")
    refused = preflight.listeners_refused(host)
    if refused:
        return {"result": False, "kind": "hot", "outcome": "refused", "epoch": _status(host).get("live_epoch"),
                "error": refused, "exit_code": None, "duration_s": 0.0}
    draining = draining_epoch(_status(host))
    if draining and (draining.get("drain_ends_at") or 0) - time.time() > WAIT_FOR_DRAIN_S:
        return _queue_hup(host, pid, draining)
    started = time.monotonic()
    last = _send_hup(host, pid)
    ok = last.get("outcome") == "success"
    return {"result": ok, "kind": "hot", "outcome": last.get("outcome"), "epoch": last.get("epoch"),
            "error": None if ok else last.get("error"), "exit_code": last.get("exit_code"),
            "duration_s": round(time.monotonic() - started, 3)}


def hot_restart(host):
    """A new epoch with the current bundle and config; the old one drains. The old epoch keeps
    serving when the new one fails."""
    with restart_lock(host):
        return hot_restart_locked(host)


def full_restart_locked(host):
    started = time.monotonic()
    steps = _drain(host, host["restart"]["full_restart_drain_s"])
    stop_locked(host)
    steps.append("stopped")
    out = start_locked(host)
    ok = out["result"]
    if ok:
        with contextlib.suppress(EnvoyFormulaError):
            _admin(host).post("/healthcheck/ok")
        steps.append("started at epoch 0")
    return {"result": ok, "kind": "full", "outcome": "success" if ok else "failed", "epoch": out.get("epoch"),
            "error": out.get("error"), "steps": steps, "duration_s": round(time.monotonic() - started, 3)}


def full_restart(host):
    """A drained full restart: health check failing, the drain window, stop, start at epoch 0,
    health check ok. For a binary whose hot restart version differs from the running one."""
    with restart_lock(host):
        return full_restart_locked(host)


def binary_hot_restart_version(host):
    binary = os.path.join(host["current_dir"], "bin", "envoy")
    try:
        proc = subprocess.run([binary, "--hot-restart-version"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvoyFormulaError(f"{binary} --hot-restart-version failed: {exc}") from exc
    version = hot_restart_version_in(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not version:
        raise EnvoyFormulaError(f"{binary} --hot-restart-version failed: {(proc.stdout + proc.stderr).strip()[-300:] or proc.returncode}")
    return version


def hot_restart_version_in(output):
    """The version line of ``envoy --hot-restart-version`` (``11.104``): Envoy may log other lines
    first (a cgroup warning), which must not make every bundle look like another version."""
    lines = [line.strip() for line in output.splitlines() if re.fullmatch(r"\d+\.\d+", line.strip())]
    return lines[-1] if lines else None


def restart_kind(host):
    """Which restart applying the current bundle and config needs: ``start`` (nothing runs), ``hot``
    (same hot restart version) or ``full`` (another version, or hot restart blocked), and why."""
    if not supervisor.restarter_pid(host):
        return {"kind": "start", "reason": "the envoy restarter is not running"}
    recorded = _status(host)
    if (recorded.get("live_epoch") is not None and recorded.get("bundle_id") == current_bundle_id(host)
            and recorded.get("config_sha256") == atomic_files.sha256_or_none(host["config_file"])):
        return {"kind": "none", "reason": "Envoy already runs the current bundle and bootstrap "
                                          "(a files-mode change is applied without a restart)"}
    new_version = binary_hot_restart_version(host)
    running_version, source = _admin(host).hot_restart_version(), "admin /hot_restart_version"
    if not running_version:
        # The admin listener is gone after a failed hot restart; the restarter recorded the version.
        running_version, source = recorded.get("hot_restart_version"), "the restarter's status file"
    out = {"new_hot_restart_version": new_version, "running_hot_restart_version": running_version}
    if recorded.get("hot_restart_blocked"):
        return {**out, "kind": "full", "reason": recorded["hot_restart_blocked"]}
    if not running_version:
        return {**out, "kind": "full", "reason": "the running envoy's hot restart version is unknown"}
    if running_version != new_version:
        return {**out, "kind": "full", "reason": f"hot restart version {new_version} of the current bundle differs "
                                                 f"from {running_version} of the running envoy ({source})"}
    return {**out, "kind": "hot", "reason": f"same hot restart version {new_version}"}


def current_bundle_id(host):
    """The release ``current`` points at, or None when no bundle is installed."""
    if not os.path.islink(host["current_dir"]):
        return None
    return os.path.basename(os.path.realpath(host["current_dir"]))


def _already_applied(host, since):
    """Another run restarted onto exactly the current bundle and config after ``since``."""
    recorded = _status(host)
    live = next((e for e in recorded.get("epochs", []) if e.get("epoch") == recorded.get("live_epoch")), None)
    return bool(live and live.get("started_at", 0) >= since
                and live.get("bundle_id") == current_bundle_id(host)
                and live.get("config_sha256") == atomic_files.sha256_or_none(host["config_file"]))


def _remember_refusal(host, error):
    """The inputs that rendered the config on disk made a new epoch fail: remember them, so the
    next runs fail fast instead of trying the same thing again."""
    try:
        inputs = atomic_files.read_json(config_file.stamp_path(host["config_file"])).get("inputs")
    except (OSError, ValueError):
        return
    rejected_inputs.record(host, inputs, f"a new epoch on this config failed: {error}")


def _queued_path(host):
    return os.path.join(host["run_dir"], "queued-restart.json")


def settle(host):
    """After a queued hot restart ran (nobody waited for it): when it failed, put the previous
    config back and remember the inputs, as a waited-for restart does. Returns what failed, or None
    (nothing queued, still queued, or it went well)."""
    try:
        queued = atomic_files.read_json(_queued_path(host))
    except (OSError, ValueError):
        return None
    recorded = _status(host)
    last = recorded.get("last_restart") or {}
    if recorded.get("pending_hup") or (last.get("hup") or 0) < (queued.get("hup") or 0) or \
            last.get("outcome") not in ("success", "failed", "refused"):
        return None  # not run yet
    with restart_lock(host):
        os.unlink(_queued_path(host))
        if last.get("outcome") == "success":
            return None
        _remember_refusal(host, last.get("error"))
        rolled = _rollback_and_recover(host)
    return {"error": last.get("error"), "rolled_back": rolled}


def _rollback_and_recover(host):
    """After a failed restart: the previous config goes back; if no Envoy is LIVE any more (a failed
    full restart), wait for the restarter's next cold start, which reads the restored file."""
    rolled = config_file.rollback(host["config_file"])
    if rolled and _admin(host).server_info().get("state") != "LIVE":
        if supervisor.restarter_pid(host):
            processes.wait_for(lambda: _status(host).get("live_epoch") is not None,
                               host["restart"]["live_timeout_s"] + 35)
        else:
            start_locked(host)
    return rolled


def reload(host, since=None, rollback=True):
    """Apply the current bundle and config: start, hot restart or drained full restart, whichever
    is needed. A run that waited for the lock and finds another run already restarted onto the same
    bundle and config after ``since`` (default: when this process started) does nothing. A failed
    new epoch puts the previous config back (``rollback``)."""
    since = processes.start_time_of_this_process() if since is None else since
    with restart_lock(host):
        if _already_applied(host, since):
            return {"result": True, "kind": "none", "epoch": _status(host).get("live_epoch"),
                    "comment": "another run already restarted envoy onto this bundle and config"}
        plan = restart_kind(host)
        if plan["kind"] == "none":
            return {"result": True, "kind": "none", "epoch": _status(host).get("live_epoch"),
                    "comment": f"no restart needed: {plan['reason']}"}
        if plan["kind"] == "start":
            out = start_locked(host)
            out["kind"] = "start"
        elif plan["kind"] == "hot":
            out = hot_restart_locked(host)
        else:
            out = full_restart_locked(host)
        out["reason"] = plan["reason"]
        if not out["result"] and rollback:
            _remember_refusal(host, out.get("error"))
            out["rolled_back"] = _rollback_and_recover(host)
        return out
