"""
The mesh on lab hosts (tests/helpers/lab.py, tests/helpers/mesh.py: network namespaces on a bridge,
set up through a real salt-master and minions), measured from the lab network:

- **Latency added per hop**: open-loop at a fixed rate (tests/helpers/openloop.py schedules sends
  by the clock and counts latency from each request's due time, so slow answers are not hidden),
  the same request edge -> foo -> bar through the mesh (4 Envoy hops: the edge, foo's ingress, foo's
  egress, bar's ingress) against the same apps called directly over the lab network (client -> foo
  app -> bar app, the same envoy_client call pointed at bar's app). Alternating rounds, p50 and p99
  over all of them; added per hop = (mesh - direct) / 4. Goal: < 0.5 ms p99 per hop. And Envoy's
  own time per hop from its access logs (total minus upstream time, in microseconds), which leaves
  out the apps and the network but not this machine's CPU scheduling.
- **A bar host losing power** under 200 req/s: failed requests (goal 0) and the time until foo's
  Envoy ejects it, with the lab's tuned pillar and with the example pillar's upstream defaults.

Envoy settings that matter, as the lab runs them: ``--concurrency 1`` per Envoy (pillar
``envoy:restart:concurrency``; 4 Envoys, 5 salt-minions, a salt-master and the Python apps share
this machine's cores), access logs to a file on every hop (Envoy buffers them and flushes every
100 ms here, ``--file-flush-interval-msec``), tracing sampled at 1 % (the example pillar's value; the
tests use 100 %), minions' scheduled highstate every 300 s so no highstate runs during a round.
Needs root (the lab); without it the rows say so.
"""

import tempfile
from pathlib import Path

from envoy_bundle.builder import build

from tests.helpers import mesh_scenarios as scenarios
from tests.helpers.lab import missing_requirements
from tests.helpers.mesh import Mesh

RATE = 200
SECONDS = 10
ROUNDS = 3
QUIET = {"envoy": {"schedule": {"seconds": 300},
                   "observability": {"tracing": {"sample_percent": 1}}}}


def latency_rows(out):
    rows = []
    for pct in ("p50", "p99"):
        direct, mesh = out["direct"][f"{pct}_ms"], out["mesh"][f"{pct}_ms"]
        per_hop = out[f"added_per_hop_{pct}_ms"]
        rows.append({"metric": f"{pct} latency edge -> foo -> bar (4 Envoy hops)", "value": mesh, "unit": "ms",
                     "baseline": direct, "ratio": mesh / direct,
                     "note": f"baseline: the same apps called directly over the lab network; open loop "
                             f"{out['rate']} req/s, {out['seconds']} s per path; failed {out['failed']}"})
        rows.append({"metric": f"{pct} latency added per Envoy hop", "value": per_hop, "unit": "ms",
                     "goal": "< 0.5 ms" if pct == "p99" else None,
                     "note": "(mesh - direct) / 4; Lyft's talk: ~1 ms; Istio: ~2.65 ms p90 per sidecar pair"})
    own = out["envoy_own_ms"]
    for pct in ("p50", "p99"):
        rows.append({"metric": f"{pct} Envoy's own time per hop (its access logs)", "value": own["all"][f"{pct}_ms"],
                     "unit": "ms", "goal": "< 0.5 ms" if pct == "p99" else None,
                     "note": "total - upstream time of each hop's access log line; by hop: " + ", ".join(
                         f"{hop} {v[f'{pct}_ms']:.3f}" for hop, v in own.items() if hop != "all" and v["n"])})
    return rows


def power_rows(out, label):
    return [
        {"metric": f"failed requests when a bar host loses power ({label})", "value": out["failed"]["count"],
         "unit": "requests", "goal": 0,
         "note": f"{out['load']['sent']} sent at {out['rate']} req/s; {out['failed']['kinds'] or 'none'}; "
                 f"retries at foo: {out['retries_at_foo']}"},
        {"metric": f"time to eject the dead bar host ({label})", "value": out["eject_s"], "unit": "s",
         "note": f"power off -> foo's Envoy flags it: {out['ejected_as']}"},
    ]


def run():
    why = missing_requirements()
    if why:
        return [{"metric": "mesh lab", "value": None, "note": f"skipped: {why}"}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        tmp = Path(tmp)
        tarball, sha_file = build(out_dir=tmp / "bundle")
        bundle = (Path(tarball), Path(sha_file).read_text().split()[0])
        with Mesh(tmp / "tuned", bundle, pillar_overrides=QUIET) as mesh:
            rows += latency_rows(scenarios.latency(mesh, rate=RATE, seconds=SECONDS, rounds=ROUNDS))
            rows += power_rows(scenarios.power_loss(mesh, "bar2", come_back=False), "the lab's tuned pillar")
        with Mesh(tmp / "defaults", bundle, pillar_overrides=QUIET, tuning=False) as mesh:
            rows += power_rows(scenarios.power_loss(mesh, "bar2", come_back=False), "example pillar defaults")
    return rows
