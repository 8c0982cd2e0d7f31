"""
Config generator at scale: render (schema + policy checks + Jinja) and `envoy --mode validate`
for a host with 250, 1,000 and 4,000 upstreams, with routes scaled alongside (2 per upstream:
2,000 routes at the 1,000 point), both roles on the host. Growth is reported as ratios between
points measured in the same run: 4x the input should cost about 4x (linear).

    .venv/bin/python -m benchmarks configgen
"""

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bundle"))

from envoy_bundle.configgen import generate  # noqa: E402

POINTS = (250, 1000, 4000)
ROUTES_PER_UPSTREAM = 2
RENDER_REPEATS = 5  # best of: the machine is shared, the minimum is the least noisy estimate


def inputs(upstreams):
    """One manifest calling ``upstreams`` services; the front serves 2 routes per service."""
    services = {f"svc-{i:05d}": {"hosts": [f"10.{i // 250}.{i % 250}.1:8080"]} for i in range(upstreams)}
    lines = ["service: bench", "ingress: {port: 9211, app_port: 18080}", "upstreams:"]
    lines += [f"  - {{service: {name}, timeout_ms: 500}}" for name in services]
    routes = []
    for name in services:
        routes.append({"name": f"{name}-api", "match": {"prefix": f"/{name}/api/"}, "service": name,
                       "timeout_ms": 2000})
        routes.append({"name": f"{name}-web", "match": {"path": f"/{name}"}, "service": name})
    pillar = {"roles": ["sidecar", "front"], "services": services, "routes": routes[: upstreams * ROUTES_PER_UPSTREAM]}
    host = {"node_id": "bench", "admin_port": 9901, "log_dir": "/var/log/envoy"}
    return [("/etc/envoy/manifest.d/bench.yaml", "\n".join(lines) + "\n")], pillar, host


def envoy_binary():
    from envoy_bundle.builder import default_envoy_path

    return str(default_envoy_path())


def time_render(upstreams):
    manifests, pillar, host = inputs(upstreams)
    times, text = [], ""
    for _ in range(RENDER_REPEATS):
        gc.collect()
        started = time.perf_counter()
        text = generate(manifests, pillar, host)
        times.append(time.perf_counter() - started)
    return min(times), text


def time_validate(text):
    with tempfile.TemporaryDirectory() as work:
        logs = Path(work) / "log"
        logs.mkdir()
        path = Path(work) / "envoy.yaml"
        path.write_text(text.replace('"/var/log/envoy/', f'"{logs}/'))
        started = time.perf_counter()
        proc = subprocess.run([envoy_binary(), "--mode", "validate", "--log-level", "error", "-c", str(path)],
                              capture_output=True, text=True, timeout=900, env={**os.environ})
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"envoy rejected the benchmark config: {proc.stderr[-2000:]}")
    return elapsed


def time_cli(upstreams):
    """What envoy.render costs on a host: a new interpreter running the bundle's launcher."""
    manifests, pillar, host = inputs(upstreams)
    with tempfile.TemporaryDirectory() as work:
        manifest_dir = Path(work) / "manifest.d"
        manifest_dir.mkdir()
        for path, text in manifests:
            (manifest_dir / Path(path).name).write_text(text)
        facts = json.dumps({"pillar": pillar, "host": host})
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "bundle" / "bin" / "envoy-configgen"), "--manifest-dir",
                               str(manifest_dir), "--facts", "-"], input=facts, capture_output=True, text=True,
                              timeout=300)
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return elapsed


def run():
    rows, render, validate = [], {}, {}
    for n in POINTS:
        render[n], text = time_render(n)
        validate[n] = time_validate(text)
        note = f"{n} upstreams, {n * ROUTES_PER_UPSTREAM} routes, {len(text) / 1e6:.1f} MB of YAML"
        goal = "< 1 s" if n == 1000 else None
        rows.append({"metric": f"render_s@{n}", "value": render[n], "unit": "s", "goal": goal, "note": note})
        rows.append({"metric": f"validate_s@{n}", "value": validate[n], "unit": "s", "note": "envoy --mode validate"})
        rows.append({"metric": f"render+validate_s@{n}", "value": render[n] + validate[n], "unit": "s"})
    rows.append({"metric": "cli_render_s@1000", "value": time_cli(1000), "unit": "s", "goal": "< 1 s",
                 "note": "bin/envoy-configgen in a new interpreter, as envoy.render runs it"})
    for small, big in zip(POINTS, POINTS[1:], strict=False):
        scale = big / small
        for label, table in (("render", render), ("validate", validate)):
            rows.append({"metric": f"{label}_growth_{small}->{big}", "value": table[big], "unit": "s",
                         "baseline": table[small], "ratio": table[big] / table[small],
                         "goal": f"~{scale:g} (linear)"})
    return rows
