"""
The outcome of the last scheduled highstate, kept in the run dir so ``envoy.status`` can say when
convergence has been failing (Envoy may well stay LIVE on its last good config meanwhile).
The formula's schedule runs ``envoy.scheduled_highstate``, which runs ``state.highstate`` and
records this.
"""

import os
import time

from . import atomic_files

FILE = "highstate.json"
SHOWN_FAILURES = 5


def path(host):
    return os.path.join(host["run_dir"], FILE)


def summarize(ret, started, finished):
    """What to keep of a highstate's return: when, whether every state succeeded, which failed."""
    if not isinstance(ret, dict):  # e.g. ["The function state.highstate is running as PID ..."]
        text = "; ".join(str(line) for line in ret) if isinstance(ret, list) else str(ret)
        return {"started_at": started, "finished_at": finished, "result": False, "states": 0,
                "failed": [{"id": None, "comment": text[:500]}]}
    failed = [{"id": state.get("__id__", key), "comment": str(state.get("comment", ""))[:500]}
              for key, state in sorted(ret.items(), key=lambda kv: kv[1].get("__run_num__", 0))
              if isinstance(state, dict) and state.get("result") is False]
    return {"started_at": started, "finished_at": finished, "result": not failed, "states": len(ret),
            "failed": failed[:SHOWN_FAILURES], "failed_count": len(failed)}


def record(host, ret, started):
    os.makedirs(host["run_dir"], exist_ok=True)
    summary = summarize(ret, started, time.time())
    atomic_files.write_json(path(host), summary)
    return summary


def last(host):
    try:
        return atomic_files.read_json(path(host))
    except (OSError, ValueError):
        return None
