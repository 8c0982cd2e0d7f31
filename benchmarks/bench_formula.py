"""
The formula end to end on a sandbox service host (the example pillar's svc1, apps foo and bar):

- a no-change highstate of the envoy formula against a trivial highstate (one file.managed) on the
  same host, both through the real ``salt-call --local`` (goal: at most 1.3x, and no restart);
- latency added by the rendered sidecar config, p50 and p99, against calling the app directly, at a
  fixed request rate over keep-alive connections: one hop (the service's ingress listener) and two
  hops (the caller's egress on 127.0.0.1:9001, then the ingress). Goal: under 1 ms per hop at p99.
"""

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from envoy_bundle.builder import build, write_pillar

from tests.helpers.load import LoadRunner
from tests.helpers.net import free_port, http_get, wait_for
from tests.helpers.sandbox import REPO, SandboxHost

RUNS = 7
RATE = 1000            # requests/s, well below saturation: latency, not throughput
CONNECTIONS = 10
SECONDS = 8
TRIVIAL_SLS = "bench-trivial-file:\n  file.managed:\n    - name: {path}\n    - contents: hello\n"


class ServiceHost:
    """svc1 from the example pillar on free ports, with foo and bar running behind their sidecar."""

    def __init__(self, base):
        self.base = Path(base)
        pillar = self.base / "pillar"
        shutil.copytree(REPO / "pillar", pillar)
        tarball, sha_file = build(out_dir=self.base / "out")
        write_pillar(pillar / "envoy" / "bundle.sls", tarball, sha_file)
        self.ports = {name: free_port() for name in ("egress", "foo", "bar", "foo_app", "bar_app")}
        catalogue = {n: {"hosts": [f"127.0.0.1:{self.ports[n]}"]} for n in ("foo", "bar")}
        trivial = self.base / "trivial"
        trivial.mkdir()
        (trivial / "bench_trivial.sls").write_text(TRIVIAL_SLS.format(path=self.base / "trivial.txt"))
        self.host = SandboxHost(self.base / "svc1", minion_id="svc1", pillar_tree=pillar, extra_file_roots=[trivial],
                                pillar={"envoy": {"lookup": {"supervisor": "daemon"}, "services": catalogue,
                                                  "listeners": {"egress": {"port": self.ports["egress"]}}}})
        manifest_dir = Path(self.host.settings["manifest_dir"])
        manifest_dir.mkdir(parents=True)
        for name in ("foo", "bar"):
            manifest = yaml.safe_load((REPO / "demo/manifests" / f"{name}.yaml").read_text())
            manifest["ingress"].update(port=self.ports[name], app_port=self.ports[f"{name}_app"])
            (manifest_dir / f"{name}.yaml").write_text(yaml.safe_dump(manifest))
        self.apps = [subprocess.Popen([sys.executable, "-m", "tests.helpers.app", "--port",
                                       str(self.ports[f"{n}_app"]), "--name", n], cwd=REPO) for n in ("foo", "bar")]

    def up(self):
        self.host.sync()
        states = self.host.apply("envoy")
        failed = {k: v["comment"] for k, v in states.items() if v["result"] is not True}
        if failed:
            raise RuntimeError(f"highstate failed: {failed}")
        wait_for(lambda: http_get(self.url("egress"), headers={"Host": "bar"})[0] == 200, timeout=60,
                 what="egress to bar")

    def url(self, port_name):
        return f"http://127.0.0.1:{self.ports[port_name]}/bench"

    def epoch(self):
        return self.host.salt_call("envoy.status")[1]["epoch"]

    def down(self):
        self.host.salt_call("envoy.stop", check=False)
        for proc in self.apps:
            proc.terminate()
            proc.wait(timeout=10)


def timed(host, sls):
    started = time.perf_counter()
    states = host.apply(sls)
    wall = time.perf_counter() - started
    changed = [k for k, v in states.items() if v["changes"] or v["result"] is not True]
    if changed:
        raise RuntimeError(f"{sls} was expected to change nothing: {changed}")
    return wall, sum(v.get("duration", 0) for v in states.values()) / 1000.0


def highstate_rows(svc):
    svc.host.apply("bench_trivial")
    epoch = svc.epoch()
    formula = [timed(svc.host, "envoy") for _ in range(RUNS)]
    trivial = [timed(svc.host, "bench_trivial") for _ in range(RUNS)]
    restarted = svc.epoch() != epoch
    f_wall, t_wall = (statistics.median(w for w, _ in runs) for runs in (formula, trivial))
    f_states, t_states = (statistics.median(d for _, d in runs) for runs in (formula, trivial))
    return [
        {"benchmark": "formula", "metric": "no-change highstate, salt-call wall (median of 7)", "value": f_wall,
         "unit": "s", "baseline": t_wall, "ratio": f_wall / t_wall, "goal": "<= 1.3",
         "note": f"baseline: one file.managed; restarts during runs: {'yes' if restarted else 'none'}"},
        {"benchmark": "formula", "metric": "no-change highstate, Salt's state time (median of 7)",
         "value": f_states, "unit": "s", "baseline": t_states, "ratio": f_states / t_states,
         "note": "sum of the states' own durations, without salt-call start-up"},
    ]


def latency_hey(url, headers=None):
    """p50/p99 from Debian's `hey` at a fixed rate (QPS per worker x workers)."""
    cmd = ["hey", "-z", f"{SECONDS}s", "-c", str(CONNECTIONS), "-q", str(RATE // CONNECTIONS)]
    for name, value in (headers or {}).items():
        cmd += ["-host", value] if name.lower() == "host" else ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=SECONDS + 60, check=True).stdout
    codes = set(re.findall(r"^\s+\[(\d{3})\]\s+\d+ responses", out, re.M))
    if codes != {"200"} or "Error distribution" in out:
        raise RuntimeError(f"failed requests against {url}:\n{out}")
    pct = {int(p): float(v) * 1000 for p, v in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", out, re.M)}
    return pct[50], pct[99]


def latency_python(url, headers=None):
    """The same with the project's asyncio client, where `hey` is not installed (noisier)."""
    with LoadRunner(url, connections=CONNECTIONS, rate=RATE, headers=headers) as load:
        time.sleep(1)   # warm the connections, then measure a clean window
        load.result.latencies_ms.clear()
        time.sleep(SECONDS)
    result = load.result
    if result.failed:
        raise RuntimeError(f"{result.failed} failed requests against {url}: {result.errors[:3]}")
    return result.percentile(50), result.percentile(99)


LOAD_TOOL = "hey" if shutil.which("hey") else "asyncio client"
latency = latency_hey if LOAD_TOOL == "hey" else latency_python


def latency_rows(svc):
    direct = latency(svc.url("bar_app"))
    one_hop = latency(svc.url("bar"))
    two_hops = latency(svc.url("egress"), headers={"Host": "bar"})
    rows = []
    for label, measured, hops in (("ingress (1 hop)", one_hop, 1), ("egress + ingress (2 hops)", two_hops, 2)):
        for index, pct in enumerate((50, 99)):
            added = (measured[index] - direct[index]) / hops
            rows.append({"benchmark": "formula", "metric": f"p{pct} latency via {label}", "value": measured[index],
                         "unit": "ms", "baseline": direct[index], "ratio": measured[index] / direct[index],
                         "goal": "< 1 ms added per hop at p99" if pct == 99 else None,
                         "note": f"added per hop: {added:.3f} ms; {LOAD_TOOL}, {RATE} req/s over {CONNECTIONS} connections"})
    return rows


def run():
    with tempfile.TemporaryDirectory(prefix="bench-formula-") as tmp:
        svc = ServiceHost(tmp)
        try:
            svc.up()
            return highstate_rows(svc) + latency_rows(svc)
        finally:
            svc.down()
