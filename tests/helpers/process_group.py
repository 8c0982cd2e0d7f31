"""Processes a test starts in a session of their own, so stopping one stops its children too."""

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start(cmd, log_path):
    """``cmd`` in its own process group, stdout and stderr to ``log_path``, run from the repo."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def stop(proc, timeout=10):
    """SIGTERM to the whole group; SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
