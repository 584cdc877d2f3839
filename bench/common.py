"""Shared pieces of the benchmarks: one result row type and a wall-clock / peak-memory timer."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass
class BenchRow:
    """One measured ratio next to its target; `higher_is_better` says which side passes."""

    name: str
    value: float
    target: float
    higher_is_better: bool = True
    detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    fixed_cost_at_quick: bool = False
    """At --quick sizes the measured work is too small for the target (a fixed start-up cost
    dominates the ratio): the row is printed but judged not applicable there."""

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def verdict(self, quick: bool) -> str:
        """pass / FAIL against the target, or n/a for a fixed-cost row at quick sizes."""
        if quick and self.fixed_cost_at_quick:
            return "n/a"
        return "pass" if self.passed else "FAIL"


def timed(fn: Callable[[], T], repeats: int = 1) -> tuple[T, float]:
    """Best-of-`repeats` wall time of `fn()`; best-of damps the noise of shared machines."""
    best = float("inf")
    result: T
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


BENCH_PREFECT_HOME = Path("artifacts/bench/prefect")


def start_prefect() -> None:
    """Start Prefect's ephemeral API (state under artifacts/bench/prefect, shared by every
    benchmark of a run and outliving their temporary folders), so timed flow runs do not pay
    for its start-up."""
    from affectflow.pipelines.prefect_env import configure_prefect_env

    BENCH_PREFECT_HOME.mkdir(parents=True, exist_ok=True)
    configure_prefect_env(BENCH_PREFECT_HOME)
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        """An empty flow: its first call starts the API."""

    warm_up()
