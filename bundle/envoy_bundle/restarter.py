"""
The restarter: supervisor of Envoy's hot restart epochs (pure stdlib; it runs with the minion's
Python from the current bundle, via ``bin/envoy-restarter``).

Signals:
  SIGHUP          start the next epoch with the *current* bundle's binary and the config file, once the
                  running epoch is LIVE and no parent is still draining; repeated HUPs coalesce into
                  one restart. (Envoy would end a draining grandparent itself if a third epoch
                  started, cutting what it still serves: measured, a request in flight fails. So the
                  HUP waits, queued, and the formula does not wait with it: status says so.)
  SIGTERM/SIGINT  stop every epoch (TERM, then KILL after --stop-timeout) and exit.
  SIGUSR1         forwarded to every epoch (Envoy reopens its logs).

What Envoy's own hot-restarter.py gets wrong and this one does not:
  - a new epoch that exits or never gets LIVE is recorded as a failure; the old epoch keeps serving;
  - a HUP while an epoch is still initializing is deferred, not fatal;
  - the only live epoch dying unexpectedly is restarted at epoch 0 with backoff.

Envoy leaves its shared memory flagged "initializing" when a child fails during its start, so no
later hot restart can succeed against that parent (and the parent has already closed its admin
listener). The restarter records this as ``hot_restart_blocked``; the formula then does a drained
full restart instead of a HUP.

State for operators and the formula is a JSON status file written atomically into --run-dir.
"""

import argparse
import fcntl
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

# Shared with the formula on the host (the bundle carries its copy of the formula's library): the
# status file's schema and names, how Envoy drops to its user, what a log tail may show.
from envoy_formula import privileges, redaction, restarter_status
from envoy_formula.errors import EnvoyFormulaError

log = logging.getLogger("envoy-restarter")

TICK_S = 0.1
FAST_TICK_S = 0.01  # while an epoch starts: notice LIVE (or death) quickly
LOG_TAIL_BYTES = 4000
VERSION_MISMATCH = "Hot restart version mismatch"
# Bounds of the crash-restart backoff; a live epoch that survived STABLE_S resets it.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="envoy-restarter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--install-dir", required=True,
                        help="holds current -> releases/<bundle id>; current/bin/envoy is re-resolved per epoch")
    parser.add_argument("--config", required=True, help="the Envoy config file (envoy.yaml)")
    parser.add_argument("--base-id", type=int, default=0)
    parser.add_argument("--admin-port", type=int, required=True, help="admin API port on 127.0.0.1")
    parser.add_argument("--run-dir", required=True, help="pid, lock and status files")
    parser.add_argument("--log-dir", required=True, help="one log per epoch")
    parser.add_argument("--drain-time-s", type=int, default=60)
    parser.add_argument("--parent-shutdown-time-s", type=int, default=90)
    parser.add_argument("--live-timeout-s", type=float, default=60.0,
                        help="a new epoch not LIVE by then is stopped and recorded as failed")
    parser.add_argument("--stop-timeout-s", type=float, default=30.0, help="TERM, then KILL after this")
    parser.add_argument("--user", help="run every Envoy epoch as this user (the restarter itself stays root), "
                                       "keeping only CAP_NET_BIND_SERVICE")
    parser.add_argument("--group", help="the group for --user (default: the user's primary group)")
    parser.add_argument("--envoy-arg", action="append", default=[], dest="envoy_args",
                        help="extra argument for every epoch (repeatable), e.g. --envoy-arg=--concurrency=2")
    args = parser.parse_args(argv)
    if args.drain_time_s >= args.parent_shutdown_time_s:
        parser.error("--drain-time-s must be below --parent-shutdown-time-s")
    return args


# --- small helpers -----------------------------------------------------------------------------


def now():
    return round(time.time(), 3)


def sha256_file(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 16), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def read_tail(path, start_offset=0, limit=LOG_TAIL_BYTES):
    """The end of ``path`` from ``start_offset`` on (the part one epoch wrote), at most ``limit`` bytes,
    private keys redacted (the tail lands in the status file and in state comments)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(start_offset, size - limit))
            return redaction.hide_private_keys(handle.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def envoy_error_line(tail):
    """Envoy's own reason for dying: its last critical/error line, else the last non-empty line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if "[critical]" in line or "[error]" in line:
            return line
    return lines[-1] if lines else ""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def admin_get_json(port, path, timeout=1.0):
    with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def split_envoy_args(args):
    """``--concurrency=2`` -> ``--concurrency 2``: Envoy's option parser wants them apart."""
    out = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            out.extend(arg.split("=", 1))
        else:
            out.append(arg)
    return out


_HR_VERSIONS = {}


def hot_restart_version(binary, timeout=10.0):
    """``envoy --hot-restart-version`` (Envoy prints it on stderr); cached per binary file."""
    try:
        stat = os.stat(binary)
    except OSError:
        return None
    key = (binary, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HR_VERSIONS:
        _HR_VERSIONS[key] = _run_hot_restart_version(binary, timeout)
    return _HR_VERSIONS[key]


def _run_hot_restart_version(binary, timeout):
    try:
        proc = subprocess.run([binary, "--hot-restart-version"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # The version line only: Envoy may log a warning (cgroups) before it.
    versions = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
                if re.fullmatch(r"\d+\.\d+", line.strip())]
    return versions[-1] if versions else None


# --- epochs ------------------------------------------------------------------------------------


class Epoch:
    """One Envoy process: its epoch number, process, log and what it was started with."""

    def __init__(self, number, proc, binary, bundle_id, config_sha256, log_path, log_offset, hr_version):
        self.number = number
        self.proc = proc
        self.binary = binary
        self.bundle_id = bundle_id
        self.config_sha256 = config_sha256
        self.log_path = log_path
        self.log_offset = log_offset
        self.hot_restart_version = hr_version
        self.started_at = now()
        self.started_mono = time.monotonic()
        self.state = "starting"  # starting -> live -> draining; or exited
        self.live_since_mono = self.started_mono
        self.drain_started_mono = None
        self.drain_ends_at = None  # wall time this epoch exits at the latest, once it drains

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, signum):
        if self.alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def log_tail(self):
        return read_tail(self.log_path, self.log_offset)

    def describe(self):
        return {
            "epoch": self.number, "pid": self.pid, "state": self.state, "started_at": self.started_at,
            "binary": self.binary, "bundle_id": self.bundle_id, "config_sha256": self.config_sha256,
            "hot_restart_version": self.hot_restart_version, "log": self.log_path,
            "drain_ends_at": self.drain_ends_at,
        }


class Restarter:
    def __init__(self, args, drop=()):
        self.args = args
        self.epochs = []  # running processes, oldest first
        self.live = None
        self.candidate = None
        self.candidate_kind = None  # "hot" (after a HUP) or "cold" (epoch 0: boot or crash recovery)
        self.pending_hup = False
        self.hups = 0
        self.restart_seq = 0
        self.last_restart = None
        self.hot_restart_blocked = None
        self.crashes = 0
        self.last_crash = None
        self.crash_restart_at = 0.0  # monotonic time of the next epoch 0 start (backoff)
        self.backoff_s = BACKOFF_MIN_S
        self.stopping = False
        self.signals = []
        self.started_at = now()
        self.drop = list(drop)  # argv prefix that starts Envoy as its own user
        self._last_status = None

    # -- signals --

    def install_signal_handlers(self):
        read_fd, write_fd = os.pipe()
        for fd in (read_fd, write_fd):
            os.set_blocking(fd, False)
        self.wakeup_fd = read_fd
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        # Children exiting wake the loop too, so a dead epoch is noticed at once.
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _on_signal(self, signum, _frame):
        if signum == signal.SIGHUP:
            self.hups += 1  # counted here: the formula waits for an attempt that covers its HUP
        self.signals.append(signum)

    def handle_signals(self):
        while self.signals:
            signum = self.signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("got %s: stopping every epoch", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                log.info("got SIGHUP (#%d): hot restart requested", self.hups)
                self.pending_hup = True
            elif signum == signal.SIGUSR1:
                log.info("got SIGUSR1: forwarding to every epoch")
                for epoch in self.epochs:
                    epoch.signal(signal.SIGUSR1)

    def sleep(self, seconds=TICK_S):
        try:
            ready, _, _ = select.select([self.wakeup_fd], [], [], seconds)
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self.wakeup_fd, 512):
                    pass
            except BlockingIOError:
                pass

    # -- starting epochs --

    def resolve_binary(self):
        """The current bundle's envoy, resolved now so a freshly installed bundle is used."""
        current = os.path.join(self.args.install_dir, "current")
        binary = os.path.realpath(os.path.join(current, "bin", "envoy"))
        bundle_id = os.path.basename(os.path.realpath(current))
        return binary, bundle_id

    def admin_address_path(self, number):
        return os.path.join(self.args.run_dir, f"admin-address.epoch-{number}")

    def envoy_command(self, binary, number):
        a = self.args
        return [
            binary, "-c", a.config,
            "--restart-epoch", str(number),
            "--base-id", str(a.base_id),
            "--drain-time-s", str(a.drain_time_s),
            "--parent-shutdown-time-s", str(a.parent_shutdown_time_s),
            "--admin-address-path", self.admin_address_path(number),
            # If the parent vanished between our check and the child's start, start fresh, not crash.
            "--skip-hot-restart-on-no-parent",
            *split_envoy_args(a.envoy_args),
        ]

    def start_epoch(self, number, kind):
        binary, bundle_id = self.resolve_binary()
        log_path = os.path.join(self.args.log_dir, f"envoy.epoch-{number}.log")
        config_sha = sha256_file(self.args.config)
        hr_version = hot_restart_version(binary)
        try:
            os.unlink(self.admin_address_path(number))
        except FileNotFoundError:
            pass
        log_file = open(log_path, "ab")
        offset = log_file.seek(0, os.SEEK_END)
        header = (f"--- envoy-restarter {now()}: starting epoch {number} ({kind}) binary={binary} "
                  f"bundle={bundle_id} config_sha256={config_sha}\n")
        log_file.write(header.encode())
        log_file.flush()
        command = self.drop + self.envoy_command(binary, number)
        log.info("starting epoch %d (%s): %s", number, kind, " ".join(command))
        self.restart_seq += 1
        self.last_restart = {
            "seq": self.restart_seq, "hup": self.hups, "kind": kind, "epoch": number,
            "outcome": "pending", "started_at": now(), "finished_at": None, "error": None,
            "exit_code": None, "log_tail": None, "bundle_id": bundle_id, "config_sha256": config_sha,
        }
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, close_fds=True)
        except OSError as exc:
            log_file.close()
            self.finish_restart("failed", error=f"cannot run {binary}: {exc}")
            return None
        finally:
            if not log_file.closed:
                log_file.close()
        epoch = Epoch(number, proc, binary, bundle_id, config_sha, log_path, offset, hr_version)
        self.epochs.append(epoch)
        self.candidate = epoch
        self.candidate_kind = kind
        return epoch

    def finish_restart(self, outcome, error=None, exit_code=None, log_tail=None):
        self.last_restart.update(outcome=outcome, finished_at=now(), error=error, exit_code=exit_code,
                                 log_tail=log_tail)
        level = logging.INFO if outcome == "success" else logging.ERROR
        log.log(level, "restart #%d (%s, epoch %s): %s%s", self.last_restart["seq"], self.last_restart["kind"],
                self.last_restart["epoch"], outcome, f": {error}" if error else "")

    # -- the candidate epoch --

    def is_live(self, epoch):
        """LIVE according to the admin API, and the answer comes from this very epoch."""
        try:
            info = admin_get_json(self.args.admin_port, "/server_info", timeout=1.0)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        options = info.get("command_line_options") or {}
        return info.get("state") == "LIVE" and int(options.get("restart_epoch", -1)) == epoch.number

    def check_candidate(self):
        epoch = self.candidate
        if epoch is None:
            return
        if not epoch.alive():
            self.candidate_failed(epoch, f"epoch {epoch.number} exited with code {epoch.proc.returncode}")
            return
        if self.is_live(epoch):
            self.candidate_live(epoch)
            return
        if time.monotonic() - epoch.started_mono > self.args.live_timeout_s:
            # SIGKILL, not SIGTERM: a child shutting down cleanly asks its parent to terminate too,
            # and the parent is the epoch that must keep serving.
            self.stop_epochs([epoch], signum=signal.SIGKILL)
            self.candidate_failed(epoch, f"epoch {epoch.number} not LIVE after {self.args.live_timeout_s:g}s")

    def candidate_live(self, epoch):
        previous = self.live
        epoch.state = "live"
        epoch.live_since_mono = time.monotonic()
        self.live = epoch
        self.candidate = None
        if previous is not None and previous.alive():
            previous.state = "draining"
            previous.drain_started_mono = time.monotonic()
            previous.drain_ends_at = now() + self.args.parent_shutdown_time_s
        self.hot_restart_blocked = None
        self.finish_restart("success")

    def candidate_failed(self, epoch, error):
        tail = epoch.log_tail()
        reason = envoy_error_line(tail)
        self.candidate = None
        self.forget_exited()
        if self.live is None:  # a cold start that failed: try again, with backoff
            self.crash_restart_at = time.monotonic() + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)
        elif VERSION_MISMATCH not in tail:
            # The child got past Envoy's shared-memory "initializing" flag and died: Envoy never clears
            # that flag, so every later hot restart against this parent would fail the same way.
            self.hot_restart_blocked = (f"epoch {epoch.number} failed during its start; Envoy refuses further "
                                        f"hot restarts of epoch {self.live.number}: a full restart is needed")
        self.finish_restart("failed", error=f"{error}: {reason}" if reason else error,
                            exit_code=epoch.proc.returncode, log_tail=tail)

    # -- the main loop steps --

    def forget_exited(self):
        for epoch in list(self.epochs):
            if epoch.alive():
                continue
            self.epochs.remove(epoch)
            if epoch.state != "draining":
                log.info("epoch %d (pid %d) exited with code %s", epoch.number, epoch.pid, epoch.proc.returncode)
            epoch.state = "exited"

    def reap(self):
        if self.candidate is not None and not self.candidate.alive():
            self.check_candidate()
        live = self.live
        self.forget_exited()
        if live is not None and live.state == "exited":
            self.live = None
            if self.candidate is None and not self.stopping:
                self.live_died(live)

    def live_died(self, epoch):
        self.crashes += 1
        if time.monotonic() - epoch.live_since_mono > STABLE_S:
            self.backoff_s = BACKOFF_MIN_S
        delay = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)
        self.crash_restart_at = time.monotonic() + delay
        log.error("live epoch %d (pid %d) died unexpectedly (code %s); restarting at epoch 0 in %.1fs",
                  epoch.number, epoch.pid, epoch.proc.returncode, delay)
        self.last_crash = {"epoch": epoch.number, "pid": epoch.pid, "exit_code": epoch.proc.returncode,
                           "at": now(), "log_tail": epoch.log_tail()[-1000:]}

    def maybe_cold_start(self):
        """Epoch 0 at boot, and again after the live epoch died (once its backoff has passed)."""
        if self.live is not None or self.candidate is not None or self.stopping:
            return
        if time.monotonic() < self.crash_restart_at:
            return
        # Left-over draining epochs share the memory epoch 0 re-creates: they go first.
        self.stop_epochs(list(self.epochs))
        self.forget_exited()
        kind = "crash" if self.crashes else "cold"
        self.pending_hup = False  # a cold start reads the current binary and config anyway
        epoch = self.start_epoch(0, kind)
        if epoch is None:
            self.crash_restart_at = time.monotonic() + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def maybe_hot_restart(self):
        if not self.pending_hup or self.stopping:
            return
        if self.live is None or self.candidate is not None:
            return  # still initializing: deferred until the running epoch is LIVE
        if any(epoch.state == "draining" for epoch in self.epochs):
            return  # queued until the parent has drained (a third epoch would cut its requests)
        self.pending_hup = False
        if self.hot_restart_blocked:
            self.restart_seq += 1
            self.last_restart = {
                "seq": self.restart_seq, "hup": self.hups, "kind": "hot", "epoch": None, "outcome": "pending",
                "started_at": now(), "finished_at": None, "error": None, "exit_code": None, "log_tail": None,
                "bundle_id": None, "config_sha256": sha256_file(self.args.config),
            }
            self.finish_restart("refused", error=self.hot_restart_blocked)
            return
        self.start_epoch(self.live.number + 1, "hot")

    def reap_overdue_parents(self):
        """A draining parent outliving its shutdown time (Envoy normally ends it) is ended here."""
        limit = self.args.parent_shutdown_time_s + self.args.stop_timeout_s
        for epoch in self.epochs:
            if epoch.state == "draining" and time.monotonic() - epoch.drain_started_mono > limit:
                log.warning("draining epoch %d outlived its shutdown time: stopping it", epoch.number)
                self.stop_epochs([epoch])

    def stop_epochs(self, epochs, signum=signal.SIGTERM):
        """TERM (or ``signum``), then KILL whatever is left after --stop-timeout-s."""
        epochs = [e for e in epochs if e.alive()]
        for epoch in epochs:
            epoch.signal(signum)
        deadline = time.monotonic() + self.args.stop_timeout_s
        while any(e.alive() for e in epochs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for epoch in epochs:
            if epoch.alive():
                log.warning("epoch %d (pid %d) ignored SIGTERM: killing it", epoch.number, epoch.pid)
                epoch.signal(signal.SIGKILL)
                epoch.proc.wait()

    # -- status --

    def status(self, state):
        live = self.live
        return {
            "restarter_pid": os.getpid(),
            "state": state,
            "started_at": self.started_at,
            "install_dir": self.args.install_dir,
            "config": self.args.config,
            "base_id": self.args.base_id,
            "admin_port": self.args.admin_port,
            "user": self.args.user,
            "drain_time_s": self.args.drain_time_s,
            "parent_shutdown_time_s": self.args.parent_shutdown_time_s,
            "epochs": [epoch.describe() for epoch in self.epochs],
            "live_epoch": live.number if live else None,
            "live_pid": live.pid if live else None,
            "bundle_id": live.bundle_id if live else None,
            "config_sha256": live.config_sha256 if live else None,
            "hot_restart_version": live.hot_restart_version if live else None,
            "pending_hup": self.pending_hup,
            "hups": self.hups,
            "restart_seq": self.restart_seq,
            "last_restart": self.last_restart,
            "hot_restart_blocked": self.hot_restart_blocked,
            "crashes": self.crashes,
            "last_crash": self.last_crash,
            "next_start_in_s": self.next_start_in_s(),
        }

    def next_start_in_s(self):
        """When nothing is LIVE or starting: seconds until the next (backed-off) epoch 0 start."""
        if self.live is not None or self.candidate is not None:
            return None
        # Rounded up to whole seconds so the status file does not change at every tick.
        return int(max(0.0, self.crash_restart_at - time.monotonic()) + 0.999)

    def write_status(self, state="running"):
        data = self.status(state)
        if data == self._last_status:
            return
        try:
            restarter_status.write(self.args.run_dir, {**data, "updated_at": now()})
        except OSError as exc:  # a full disk must not take Envoy down; retried next tick
            log.warning("cannot write the status file in %s: %s", self.args.run_dir, exc)
            return
        self._last_status = data

    # -- main --

    def step(self):
        self.reap()
        self.check_candidate()
        self.maybe_cold_start()
        self.maybe_hot_restart()
        self.reap_overdue_parents()
        self.write_status()

    def run(self):
        self.install_signal_handlers()
        self.write_status("starting")
        while not self.stopping:
            self.handle_signals()
            if self.stopping:
                break
            try:
                self.step()
            except Exception:  # Envoy dies with us (its parent-death signal): never die of a bad tick
                log.exception("unexpected error in the supervision loop; carrying on")
                time.sleep(TICK_S)
            self.sleep(FAST_TICK_S if self.candidate or self.pending_hup else TICK_S)
        self.write_status("stopping")
        self.stop_epochs(list(self.epochs))
        self.forget_exited()
        self.live = self.candidate = None
        if self.last_restart and self.last_restart["outcome"] == "pending":
            self.finish_restart("failed", error="the restarter was stopped before the epoch got LIVE")
        self.remove_shared_memory()
        self.write_status("stopped")
        return 0

    def remove_shared_memory(self):
        """No epoch of this base id is left: drop Envoy's hot restart shared memory, so a stale
        segment (say, root-owned) cannot block the next epoch 0."""
        path = f"/dev/shm/envoy_shared_memory_{self.args.base_id * 10}"
        try:
            os.unlink(path)
        except OSError:
            pass


def envoy_user_prefix(user, group):
    """The argv prefix that starts Envoy as ``user`` (only when we are root), else []."""
    if not user or user == "root" or os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError as exc:
        raise SystemExit(f"envoy-restarter: cannot run Envoy as {user}:{group}: no such user or group ({exc})") \
            from None
    try:
        return privileges.drop_command(entry.pw_uid, gid)
    except EnvoyFormulaError as exc:
        raise SystemExit(f"envoy-restarter: {exc}") from None


def take_instance_lock(run_dir):
    """One restarter per run dir: a second one exits instead of starting a rival Envoy."""
    handle = open(os.path.join(run_dir, restarter_status.INSTANCE_LOCK_FILE), "a+")  # held for our whole life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s envoy-restarter[%(process)d] %(levelname)s %(message)s")
    for path in (args.run_dir, args.log_dir):
        os.makedirs(path, exist_ok=True)
    drop = envoy_user_prefix(args.user, args.group)  # fails before any pid file is written
    lock = take_instance_lock(args.run_dir)
    if lock is None:
        log.error("another restarter already runs for %s; exiting", args.run_dir)
        return 2
    pid_path = restarter_status.pid_path(args.run_dir)
    with open(f"{pid_path}.tmp", "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(f"{pid_path}.tmp", pid_path)
    try:
        return Restarter(args, drop).run()
    finally:
        try:
            with open(pid_path) as handle:
                if handle.read().strip() == str(os.getpid()):
                    os.unlink(pid_path)
        except OSError:
            pass
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
