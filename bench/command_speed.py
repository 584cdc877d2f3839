"""Feedback speed of the command line, wall time from the shell (a fresh `affectflow` process):
`affectflow runs` (target < 1.5 s), a config typo (< 2 s), a no-change rerun of the demo (< 5 s).

The demo is run once through Prefect first (not timed); the rerun with the same run id then
finds every stage up to date and is answered without starting Prefect.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchRow
from bench.pipeline_profile import QUICK_DEMO, demo_workdir

REPO = Path(__file__).resolve().parents[1]
AFFECTFLOW = [sys.executable, "-m", "affectflow"]


def shell_seconds(argv: list[str], expect: int, repeats: int) -> float:
    """Best-of-`repeats` wall time of one command in a fresh interpreter, checked exit code."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([*AFFECTFLOW, "--quiet", *argv], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        best = min(best, time.perf_counter() - start)
        if done.returncode != expect:
            raise RuntimeError(f"affectflow {' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return best


def run(quick: bool) -> list[BenchRow]:
    repeats = 1 if quick else 3
    demo = ["run", "pretrain", "--config", str(REPO / "configs" / "demo.yaml"), "--run-id", "bench",
            *[item for override in (QUICK_DEMO if quick else []) for item in ("--set", override)]]
    with tempfile.TemporaryDirectory() as tmp, demo_workdir(Path(tmp), quick):
        shell_seconds(demo, expect=0, repeats=1)  # the first run, through Prefect
        rerun = shell_seconds(demo, expect=0, repeats=repeats)
        runs = shell_seconds(["runs"], expect=0, repeats=repeats)
        typo = shell_seconds(["check", "--config", str(REPO / "configs" / "demo.yaml"),
                              "--set", "ingest.shard_sise=64"], expect=2, repeats=repeats)
    return [BenchRow("affectflow runs, seconds", runs, 1.5, higher_is_better=False,
                     detail="fresh process, one demo run listed"),
            BenchRow("config typo reported, seconds", typo, 2.0, higher_is_better=False,
                     detail="affectflow check --set ingest.shard_sise=64 (exit 2)"),
            BenchRow("demo no-change rerun from the shell, seconds", rerun, 5.0, higher_is_better=False,
                     detail="affectflow run pretrain --run-id bench, every stage up to date")]
