"""
The Envoy bundle: build time and size of the real bundle (107 MB envoy binary), against gzip of the
binary alone (the floor: the builder can't compress faster than that); then the run time of
``state.apply envoy.bundle`` when the bundle is already current, against a trivial ``file.managed``
state on the same sandbox host, both through the real ``salt-call --local``.

Wall time includes salt-call's own start-up (most of it); the state's ``duration`` (Salt's
in-process timing of that one state) shows what the bundle check itself costs.
"""

import statistics
import tempfile
import time
import zlib
from pathlib import Path

from envoy_bundle import builder

from tests.helpers.sandbox import SandboxHost

RUNS = 7
TRIVIAL_SLS = """bench-trivial-file:
  file.managed:
    - name: {path}
    - contents: hello
"""


def gzip_seconds(path):
    """Compress ``path`` with the builder's zlib level, discarding the output."""
    started = time.perf_counter()
    compressor = zlib.compressobj(builder.GZIP_LEVEL, zlib.DEFLATED, 31)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            compressor.compress(chunk)
    compressor.flush()
    return time.perf_counter() - started


def timed_apply(host, sls, state_id):
    started = time.perf_counter()
    result = host.apply(sls)[state_id]
    wall = time.perf_counter() - started
    if result["result"] is not True or result["changes"]:
        raise RuntimeError(f"{sls} was expected to be a successful no-change run: {result}")
    return wall, result["duration"] / 1000.0


def median_runs(host, sls, state_id):
    walls, durations = zip(*(timed_apply(host, sls, state_id) for _ in range(RUNS)), strict=True)
    return statistics.median(walls), statistics.median(durations)


def run():
    rows = []
    envoy = builder.default_envoy_path()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        tarball, sha_file = builder.build(tmp / "out", envoy_path=envoy)
        build_s = time.perf_counter() - started
        floor_s = gzip_seconds(envoy)
        size = tarball.stat().st_size
        rows += [
            {"metric": "build time (real envoy 1.40)", "value": build_s, "unit": "s", "baseline": floor_s,
             "ratio": build_s / floor_s, "note": "baseline: gzip of the envoy binary alone"},
            {"metric": "bundle size", "value": size / 1e6, "unit": "MB",
             "baseline": envoy.stat().st_size / 1e6, "ratio": size / envoy.stat().st_size,
             "note": "baseline: the uncompressed envoy binary"},
        ]

        sha = sha_file.read_text().split()[0]
        host = SandboxHost(tmp / "host", minion_id="bench-bundle",
                           pillar={"envoy": {"bundle": {"source": tarball.as_uri(), "sha256": sha}}})
        host.sync()
        bench_dir = host.ext_dir / "bench"
        bench_dir.mkdir()
        (bench_dir / "trivial.sls").write_text(TRIVIAL_SLS.format(path=host.root / "trivial.txt"))
        started = time.perf_counter()
        first = host.apply("envoy.bundle")["envoy-bundle-installed"]
        install_s = time.perf_counter() - started
        if first["result"] is not True or not first["changes"]:
            raise RuntimeError(f"the first bundle install failed: {first}")
        host.apply("bench.trivial")

        bundle_wall, bundle_state = median_runs(host, "envoy.bundle", "envoy-bundle-installed")
        trivial_wall, trivial_state = median_runs(host, "bench.trivial", "bench-trivial-file")
        rows += [
            {"metric": "first install via salt-call (file://)", "value": install_s, "unit": "s",
             "note": "download-free source: unpack, verify every member, run bin/envoy --version"},
            {"metric": "no-change run, salt-call wall", "value": bundle_wall, "unit": "s",
             "baseline": trivial_wall, "ratio": bundle_wall / trivial_wall, "goal": "<= 1.5",
             "note": f"median of {RUNS}; baseline: trivial file.managed"},
            {"metric": "no-change run, state duration", "value": bundle_state * 1000, "unit": "ms",
             "baseline": trivial_state * 1000, "ratio": bundle_state / trivial_state,
             "note": "Salt's own timing of the one state"},
        ]
    return rows
