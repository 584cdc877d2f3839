"""`python -m bench [--quick] [--only NAME ...]`: run every benchmark and print one table.

Each module in bench/ with a `run(quick)` function is a benchmark. Results are also written
as Parquet under artifacts/bench/ so runs on different days or machines can be compared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import pkgutil
import platform
import sys
import traceback
from pathlib import Path

import pandas as pd

import bench
from bench.common import BenchRow

# `gpu` is its own entry point (`python -m bench.gpu`), for CUDA machines.
SKIP_MODULES = {"common", "__main__", "gpu"}


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in SKIP_MODULES)


def machine_line() -> str:
    import os

    import torch

    return (f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"cuda={'yes' if torch.cuda.is_available() else 'no'}")


def format_table(rows: list[tuple[str, BenchRow | None, str]], quick: bool = False) -> str:
    lines = [f"{'benchmark':<44} {'value':>10} {'target':>10}  result  detail"]
    for module, row, error in rows:
        if row is None:
            lines.append(f"{module:<44} {'-':>10} {'-':>10}  ERROR   {error}")
            continue
        comparator = ">=" if row.higher_is_better else "<="
        lines.append(f"{row.name:<44} {row.value:>10.3f} {comparator + format(row.target, '.2f'):>10}  "
                     f"{row.verdict(quick):<6}  {row.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="module names to run")
    parser.add_argument("--out", default="artifacts/bench", help="folder for the Parquet results")
    args = parser.parse_args(argv)
    modules = args.only or discover()
    results: list[tuple[str, BenchRow | None, str]] = []
    for name in modules:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        try:
            for row in importlib.import_module(f"bench.{name}").run(quick=args.quick):
                results.append((name, row, ""))
        except Exception as error:
            traceback.print_exc()
            results.append((name, None, f"{type(error).__name__}: {error}"))
    print(machine_line())
    print(format_table(results, quick=args.quick))
    if args.quick and any(row is not None and row.fixed_cost_at_quick for _, row, _ in results):
        print("n/a: at --quick sizes a fixed start-up cost dominates this ratio; judged at full sizes")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"bench-{stamp}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"module": m, "name": r.name if r else m, "value": r.value if r else None,
                   "target": r.target if r else None, "passed": r.passed if r else False,
                   "verdict": r.verdict(args.quick) if r else "ERROR",
                   "detail": r.detail if r else e, "machine": machine_line(), "time": stamp}
                  for m, r, e in results]).to_parquet(out)
    print(f"results written to {out}")
    return 0 if all(r is not None for _, r, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
