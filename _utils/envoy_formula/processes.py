"""
Long-running processes the formula starts and stops: the restarter (Envoy's supervisor) and the
discovery service. Both are found by a pid file *and* their command line, never by name alone, so
a recycled pid or another host's instance in the same machine is never touched.
"""

import contextlib
import os
import signal
import time


def cmdline(pid):
    """The process's argv, or [] when it is gone (or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def alive(pid):
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_pidfile(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def running_pid(pidfile, is_ours):
    """The pid in ``pidfile`` when that process is alive and ``is_ours(argv)``; else None."""
    pid = read_pidfile(pidfile)
    if pid and alive(pid) and is_ours(cmdline(pid)):
        return pid
    return None


def wait_for(predicate, timeout, interval=0.01):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns its
    last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def terminate(pids, timeout):
    """SIGCONT + SIGTERM, then SIGKILL after ``timeout``; returns the pids that needed the KILL."""
    for pid in pids:
        for signum in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    wait_for(lambda: not any(alive(p) for p in pids), timeout, interval=0.05)
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed


def spawn_daemon(argv, log_path, env=None):
    """Start ``argv`` detached from the caller: double fork, its own session, cwd /, stdin from
    /dev/null, stdout and stderr appended to ``log_path``. The daemon writes its own pid file.
    Returns once the intermediate child is gone; a failing exec is written to the log."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the forked child)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, 65536)
            if env is None:
                os.execv(argv[0], argv)
            os.execve(argv[0], argv, env)
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the log must say it
            os.write(2, f"cannot start {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    os.close(log_fd)
    os.close(null_fd)
    os.waitpid(child, 0)


def tail(path, limit=2000):
    """The last ``limit`` bytes of a log, or '' when there is none."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def start_time_of_this_process():
    """When this process started, in epoch seconds (from /proc)."""
    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
