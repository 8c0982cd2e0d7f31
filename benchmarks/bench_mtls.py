"""
Latency mesh TLS adds to a sidecar-to-sidecar hop (issue 14; goal: p99 at most 0.2 ms more than
plaintext), measured against plaintext in the same run.

Two sidecars on loopback (tests/helpers/sidecar_tls.py), each one real Envoy (``--concurrency 1``)
rendered by the bundle's generator, whose egress calls its own service's ingress: client -> egress
-> ingress -> app. They differ only in pillar ``envoy:mesh_tls``: ``mode: off`` (the baseline,
plaintext between egress and ingress) and ``mode: strict`` (that connection is mTLS: the egress
presents the host's identity and checks the callee's URI SAN, the ingress requires a client
certificate of the mesh CA and checks the allow list with the RBAC filter). Keys are EC P-256 as
the formula's x509 states make them; the SDS files are the formula's own (``mesh_identity.publish``).

Load: open loop at a fixed rate per sidecar (tests/helpers/openloop.py: each request is due at its
time whatever happened before, and its latency counts from that due time), keep-alive connections
as Envoy's pools keep them (handshakes happen once per connection, not per request). One load
generator sends to both sidecars, request by request in turn (which goes first swapped every
round), after a warm-up: whatever else this shared 2-core machine does at a moment falls on both
alike. p50 and p99 over all rounds. The difference (mTLS - plaintext) is
what one mTLS hop adds, counting both of its ends (the caller's encryption and the callee's
decryption, verification and RBAC). Both sidecars run the whole time; only one is under load.

Latency on a machine shared with other work moves with that work (the notes give the load
average), so the run also counts Envoy's own CPU time per request (utime + stime of the Envoy
process over each round, /proc/<pid>/stat), which the neighbours' load does not change: the cost
of mTLS in CPU, both ends of the hop together.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from envoy_bundle.builder import default_envoy_path

from tests.helpers.openloop import percentile
from tests.helpers.sidecar_tls import LocalSidecar

RATE = 200
SECONDS = 10
ROUNDS = 4
WARMUP_S = 3
GOAL_MS = 0.2
REPO = Path(__file__).resolve().parents[1]


def open_loop(sidecars, workdir, name, seconds, rate):
    """One open-loop run at ``rate`` req/s per sidecar, its requests taking the sidecars in turn;
    returns openloop's result (each record names its target by index)."""
    out = Path(workdir) / f"{name}.json"
    argv = [sys.executable, "-m", "tests.helpers.openloop", "--header", "Host: bar", "--rate", str(rate * len(sidecars)),
            "--duration", str(seconds), "--connections", "16", "--timeout", "5", "--out", str(out)]
    for sidecar in sidecars:
        argv += ["--url", f"{sidecar.egress_url}/bench"]
    subprocess.run(argv, check=True, cwd=REPO, timeout=seconds + 60)
    return json.loads(out.read_text())


def cpu_seconds(pid):
    """utime + stime of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(sidecars, workdir, rate=RATE, seconds=SECONDS, rounds=ROUNDS, warmup_s=WARMUP_S):
    """{name: {n, failed, p50_ms, p99_ms, cpu_us_per_request}}. Every round sends to both
    sidecars, request by request in turn (the order swapped each round), so whatever else the
    machine does at any moment falls on both alike."""
    open_loop(list(sidecars.values()), workdir, "warmup", warmup_s, rate)
    latencies = {name: [] for name in sidecars}
    failed = dict.fromkeys(sidecars, 0)
    cpu = dict.fromkeys(sidecars, 0.0)
    sent = dict.fromkeys(sidecars, 0)
    for index in range(rounds):
        order = list(sidecars) if index % 2 == 0 else list(reversed(sidecars))
        before = {name: cpu_seconds(sidecars[name].envoy_pid) for name in order}
        result = open_loop([sidecars[name] for name in order], workdir, f"round-{index}", seconds, rate)
        for name in order:
            cpu[name] += cpu_seconds(sidecars[name].envoy_pid) - before[name]
        for record in result["records"]:
            name = order[record["target"]]
            sent[name] += 1
            if record["status"] == 200:
                latencies[name].append(record["latency_ms"])
            else:
                failed[name] += 1
    out = {}
    for name, values in latencies.items():
        values.sort()
        out[name] = {"n": len(values), "failed": failed[name],
                     "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                     "cpu_us_per_request": cpu[name] / max(1, sent[name]) * 1e6}
    return out


def rows_of(out, rate, seconds):
    plain, mtls = out["plaintext"], out["mtls"]
    note = (f"open loop {rate} req/s to each sidecar, requests to the two interleaved, {seconds} s; client -> egress -> ingress "
            f"-> app, one Envoy --concurrency 1; failed: plaintext {plain['failed']}, mTLS {mtls['failed']}; "
            f"{out['handshakes']} TLS handshakes on the mTLS hop; load average {out['load']}")
    rows = []
    for pct in ("p50", "p99"):
        rows.append({"metric": f"{pct} latency through a sidecar hop with mTLS", "value": mtls[f"{pct}_ms"],
                     "unit": "ms", "baseline": plain[f"{pct}_ms"], "ratio": mtls[f"{pct}_ms"] / plain[f"{pct}_ms"],
                     "note": "baseline: the same hop in plaintext (mesh_tls off); " + note})
        rows.append({"metric": f"{pct} latency added per hop by mTLS", "value": mtls[f"{pct}_ms"] - plain[f"{pct}_ms"],
                     "unit": "ms", "goal": f"<= {GOAL_MS} ms" if pct == "p99" else None,
                     "note": "mTLS - plaintext, both measured in this run"})
    rows.append({"metric": "Envoy CPU per request through a sidecar hop with mTLS", "value": mtls["cpu_us_per_request"],
                 "unit": "us", "baseline": plain["cpu_us_per_request"],
                 "ratio": mtls["cpu_us_per_request"] / plain["cpu_us_per_request"],
                 "note": "utime + stime of the Envoy process (both ends of the hop) per request sent; baseline: "
                         "plaintext; not moved by other work on the machine"})
    return rows


def run(rate=RATE, seconds=SECONDS, rounds=ROUNDS):
    envoy_bin = str(default_envoy_path())
    if not os.access(envoy_bin, os.X_OK):
        return [{"metric": "mTLS latency", "value": None, "note": f"skipped: no envoy binary at {envoy_bin}"}]
    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as tmp:
        sidecars = {}
        try:
            sidecars["plaintext"] = LocalSidecar(Path(tmp) / "plaintext", envoy_bin, mode="off")
            sidecars["mtls"] = LocalSidecar(Path(tmp) / "mtls", envoy_bin, mode="strict")
            load_before = os.getloadavg()[0]
            out = measure(sidecars, tmp, rate, seconds, rounds)
            out["load"] = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
            # The hops are what they claim: TLS on one, none on the other.
            out["handshakes"] = sidecars["mtls"].stats("^cluster\\.bar\\.ssl\\.handshake$")["cluster.bar.ssl.handshake"]
            plain_tls = sidecars["plaintext"].stats("^cluster\\.bar\\.ssl\\.handshake$")
            if not out["handshakes"] or plain_tls.get("cluster.bar.ssl.handshake"):
                raise RuntimeError(f"not the hops meant: mTLS handshakes {out['handshakes']}, plaintext {plain_tls}")
        finally:
            for sidecar in sidecars.values():
                sidecar.close()
    return rows_of(out, rate, seconds * rounds)


if __name__ == "__main__":
    for row in run():
        print(row)
