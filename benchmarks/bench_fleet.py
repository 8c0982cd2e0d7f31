"""
A pillar route edit reaching a real fleet (salt-master + 2 salt-minions, pytest-salt-factories)
through the minions' own scheduled highstate: the time from the edit to the front serving the new
route, against the schedule interval plus splay (the longest a minion may wait for its next run).
It runs the fleet test, which records the figure in ENVOY_BENCH_OUT.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/fleet/test_fleet_highstate.py"


def run():
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        out = Path(tmp) / "figure.json"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=REPO,
                              env={**os.environ, "ENVOY_BENCH_OUT": str(out)}, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the fleet test failed:\n{proc.stdout[-3000:]}")
        figure = json.loads(out.read_text())
    bound = figure["schedule_s"] + figure["splay_s"]
    return [{"benchmark": "fleet", "metric": "pillar route edit -> front serving it (2 minions, scheduled highstate)",
             "value": figure["edit_to_served_s"], "unit": "s", "baseline": bound,
             "ratio": figure["edit_to_served_s"] / bound,
             "note": f"baseline: schedule interval {figure['schedule_s']} s + splay {figure['splay_s']} s; "
                     "the rest is the highstate itself and the hot restart"}]
