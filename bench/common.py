"""Shared pieces of the benchmarks: one result row type, a wall-clock / peak-memory timer, and
photo-like JPEGs written on the spot."""

from __future__ import annotations

import hashlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

PHOTO_SIZE = (640, 480)


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


def synchronize(device: object) -> None:
    """Wait for a GPU's queued work, so wall clocks measure it (a no-op on CPUs)."""
    import torch

    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_photos(folder: Path, count: int, size: tuple[int, int] = PHOTO_SIZE,
                 seed: int = 0) -> list[tuple[str, str]]:
    """`count` distinct JPEGs (quality 90) of smooth random colour fields, which compress and
    decode like photographs (about 100 KB at 640x480); returns (path, sha256) of each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for index in range(count):
        coarse = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        photos.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
    return photos


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
