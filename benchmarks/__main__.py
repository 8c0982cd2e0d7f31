"""
`make bench`: run every ``benchmarks/bench_*.py`` and write one table of figures to
``benchmarks/results/latest.md`` and ``latest.json``.

Each benchmark module has ``run() -> list[dict]``; a row holds ``benchmark``, ``metric``,
``value``, ``unit`` and, where a goal is a ratio, ``baseline`` (measured in the same run on this
machine, which is noisy), ``ratio`` and ``goal``. ``python -m benchmarks NAME ...`` runs only those.
"""

import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover(names):
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        modules = [m for m in modules if any(n in m for n in names)]
    return modules


def fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def to_markdown(rows, meta):
    cols = ["benchmark", "metric", "value", "unit", "baseline", "ratio", "goal", "note"]
    lines = [f"# Benchmark results ({meta['date']}, {meta['machine']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    rows, failed = [], []
    for name in discover(argv):
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            for row in module.run():
                row.setdefault("benchmark", name.removeprefix("bench_"))
                rows.append(row)
                print("   ", {k: fmt(v) for k, v in row.items()}, flush=True)
        except Exception:
            failed.append(name)
            traceback.print_exc()
        print(f"   ({time.monotonic() - started:.1f}s)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {platform.node()}",
            "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    if failed:
        print("benchmarks that failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
