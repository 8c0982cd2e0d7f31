"""Shared bits of the config generator tests: loading golden/bad cases, running envoy validate."""

import os
import re
import subprocess
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parents[1]
GOLDEN = TESTS / "golden"
BAD = TESTS / "bad"
GOLDEN_CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "pillar.yaml").exists())


def load_yaml(path):
    return yaml.safe_load(Path(path).read_text())


def golden_host():
    return load_yaml(GOLDEN / "host.yaml")


def golden_inputs(case):
    """(manifests as (path, text) with stable paths, pillar, host) for one golden case."""
    case_dir = GOLDEN / case
    manifest_dir = case_dir / "manifests"
    manifests = []
    if manifest_dir.is_dir():
        for path in sorted(manifest_dir.glob("*.yaml")):
            manifests.append((f"/etc/envoy/manifest.d/{path.name}", path.read_text()))
    return manifests, load_yaml(case_dir / "pillar.yaml"), golden_host()


def envoy_validate(envoy_bin, text, workdir, log_dir=None, pki_dir=None):
    """Run the real ``envoy --mode validate`` on ``text``; the access log path is moved under
    ``workdir`` because validation opens it, and so is ``pki_dir`` (mesh TLS), where validation
    wants every SDS file and watched directory to exist. Returns (ok, output)."""
    workdir = Path(workdir)
    logs = workdir / "log"
    logs.mkdir(exist_ok=True)
    if log_dir:
        text = text.replace(f'"{log_dir}/', f'"{logs}/')
    if pki_dir:
        pki = workdir / "pki"
        text = text.replace(f'"{pki_dir}/', f'"{pki}/')
        for sds_file in set(re.findall(rf'"({re.escape(str(pki))}/sds/[^"]+\.yaml)"', text)):
            Path(sds_file).parent.mkdir(parents=True, exist_ok=True)
            Path(sds_file).touch()
    path = workdir / "envoy.yaml"
    path.write_text(text)
    proc = subprocess.run([envoy_bin, "--mode", "validate", "--log-level", "error", "-c", str(path)],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    return proc.returncode == 0, proc.stdout + proc.stderr


def deep_merge(base, extra):
    merged = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


BAD_CASES = sorted(p.stem for p in BAD.glob("*.yaml") if not p.name.startswith("_"))


def bad_case(name, manifest_dir):
    """(manifests written into ``manifest_dir``, pillar, host, expected messages, absent strings)
    for tests/bad/<name>.yaml, built over tests/bad/_base.yaml. ``name=None``: the good base."""
    base = load_yaml(BAD / "_base.yaml")
    case = load_yaml(BAD / f"{name}.yaml") if name else {}
    manifest_dir = Path(manifest_dir)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for filename, text in case.get("manifests", base["manifests"]).items():
        (manifest_dir / filename).write_text(text)
    pillar = deep_merge(base["pillar"], case.get("pillar"))
    host = deep_merge(base["host"], case.get("host"))
    expect = [line.replace("{dir}", str(manifest_dir)) for line in case.get("expect", [])]
    return pillar, host, expect, case.get("absent", [])
