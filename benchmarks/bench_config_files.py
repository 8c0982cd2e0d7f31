"""
Files mode (docs/config-files.md) on a sandbox front host under real ``salt-call --local``:

- a route edit applied by ``state.apply envoy`` against a no-change highstate on the same host
  (goal: at most 1.2x);
- an RDS file renamed into place until the admin API shows its version (goal: under 1 s), against
  one admin round trip;
- ten route edits back to back under load at >= 2,000 requests/s: failed requests and new epochs
  (goal: 0 and 0);
- two bootstrap changes back to back: wall time of the second apply against the first (goal: at
  most 1.5x; the second is queued behind the first one's drain, not waited for).
"""

import statistics
import tempfile
import time
from pathlib import Path

import yaml
from envoy_bundle.builder import build

from tests.helpers.envoy_host import UpstreamApp
from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import SandboxHost, deep_merge

RUNS = 5
RATE = 2000
RESTART = {"drain_time_s": 20, "parent_shutdown_time_s": 30, "live_timeout_s": 20, "stop_timeout_s": 5,
           "full_restart_drain_s": 1}


class FrontHost:
    def __init__(self, base):
        base = Path(base)
        tarball, sha_file = build(out_dir=base / "out")
        self.app = UpstreamApp(name="app").start()
        self.http_port = free_port()
        self.network = {
            "bundle": {"source": tarball.as_uri(), "sha256": Path(sha_file).read_text().split()[0]},
            "roles": ["front"], "lookup": {"config_mode": "files", "supervisor": "daemon"},
            "listeners": {"front": {"http_port": self.http_port}},
            "services": {"app": {"hosts": [f"127.0.0.1:{self.app.port}"]}},
            "routes": [{"name": "app", "match": {"prefix": "/"}, "service": "app", "timeout_ms": 5000}],
            "restart": RESTART,
        }
        self.host = SandboxHost(base / "front", minion_id="bench-front")
        self.host.set_pillar({"envoy": self.network})
        self.host.sync()

    def set_network(self, network):
        self.network = network
        self.host.set_pillar({"envoy": network})

    def apply(self):
        started = time.perf_counter()
        states = self.host.apply("envoy")
        wall = time.perf_counter() - started
        failed = {k: v["comment"] for k, v in states.items() if v["result"] is not True}
        if failed:
            raise RuntimeError(f"highstate failed: {failed}")
        return wall, states

    def edit_route(self, timeout_ms):
        routes = [dict(route, timeout_ms=timeout_ms) for route in self.network["routes"]]
        self.set_network({**self.network, "routes": routes})

    def status(self):
        return self.host.salt_call("envoy.status")[1]

    def admin(self, path):
        return http_get(f"http://127.0.0.1:{self.host.admin_port}{path}")[1]

    def down(self):
        self.host.salt_call("envoy.stop", check=False, timeout=90)
        self.app.stop()


def apply_rows(front):
    edits, idle = [], []
    for run in range(RUNS):
        front.edit_route(6000 + run)
        wall, states = front.apply()
        if states["envoy-config-file-managed"]["changes"].get("restart") != "none":
            raise RuntimeError("a route edit restarted Envoy")
        edits.append(wall)
        idle.append(front.apply()[0])
    edit, baseline = statistics.median(edits), statistics.median(idle)
    return [{"metric": "route edit applied by salt-call state.apply (median of 5)", "value": edit, "unit": "s",
             "baseline": baseline, "ratio": edit / baseline, "goal": "<= 1.2",
             "note": "baseline: a no-change highstate of the same host; applied live, no restart"}]


def rename_rows(front):
    rds = next(Path(front.host.settings["config_dir"], "xds").rglob("rds/front_http/routes.yaml"))
    times, round_trips = [], []
    for run in range(10):
        data = yaml.safe_load(rds.read_text())
        data["version_info"] = f"bench-{run}-{time.monotonic_ns()}"
        data["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] = f"{7 + run}s"
        tmp = rds.with_name(".bench.tmp")
        tmp.write_text(yaml.safe_dump(data))
        started = time.perf_counter()
        tmp.rename(rds)
        wait_for(lambda v=data["version_info"]: f'"{v}"' in front.admin(
            "/stats?filter=http.front_http.rds.front_http.version_text"), timeout=10, interval=0.002,
            what="the renamed file's version in the admin API")
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        front.admin("/ready")
        round_trips.append(time.perf_counter() - started)
    value, baseline = statistics.median(times), statistics.median(round_trips)
    front.host.apply("envoy")  # back to what the inputs render
    return [{"metric": "RDS file renamed into place -> new version in admin (median of 10)", "value": value * 1000,
             "unit": "ms", "baseline": baseline * 1000, "ratio": value / baseline, "goal": "< 1000 ms",
             "note": "baseline: one admin round trip"}]


def back_to_back_rows(front):
    seq = front.status()["restart_seq"]
    with LoadRunner(f"http://127.0.0.1:{front.http_port}/ten", connections=16, rate=RATE) as load:
        time.sleep(1)
        for run in range(10):
            front.edit_route(8000 + run)
            front.apply()
        time.sleep(1)
    result = load.result
    new_epochs = front.status()["restart_seq"] - seq
    achieved = result.total / result.duration_s
    return [{"metric": "failed requests over 10 route edits back to back", "value": result.failed, "unit": "requests",
             "goal": "0", "note": f"{result.total} requests at {achieved:,.0f} req/s (asked {RATE}), 16 connections"},
            {"metric": "new epochs over 10 route edits back to back", "value": new_epochs, "unit": "epochs", "goal": "0"}]


def bootstrap_rows(front):
    walls = []
    for prefix in ("one", "two"):
        front.set_network(deep_merge(front.network, {"observability": {"stats": {"sink": "statsd", "prefix": prefix}}}))
        wall, states = front.apply()
        walls.append(wall)
    outcome = states["envoy-service-running"]["changes"].get("outcome")
    return [{"metric": "two bootstrap changes back to back: second apply", "value": walls[1], "unit": "s",
             "baseline": walls[0], "ratio": walls[1] / walls[0], "goal": "<= 1.5",
             "note": f"baseline: the first apply (a hot restart); the second was {outcome} behind the "
                     f"first one's drain ({RESTART['parent_shutdown_time_s']} s)"}]


def run():
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        front = FrontHost(tmp)
        try:
            front.apply()
            wait_for(lambda: http_get(f"http://127.0.0.1:{front.http_port}/x")[0] == 200, timeout=30,
                     what="the front serving")
            return apply_rows(front) + rename_rows(front) + back_to_back_rows(front) + bootstrap_rows(front)
        finally:
            front.down()
