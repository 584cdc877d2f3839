"""Score scales for `partition`: streaming statistics, thresholds and normalised scores.

A score column is turned into a threshold in one of three modes (see docs/partition.md):
`absolute` (raw cosine), `minmax` (sigma on the min-max normalised scale) or `quantile`
(sigma is a quantile of the dataset's scores). Everything here is fed shard by shard, so memory
stays flat as the dataset grows.

Exact quantiles without holding the scores: every finite float32 maps to a uint32 key whose
unsigned order equals the float order. A first pass counts keys per 65,536 buckets of their
high 16 bits; the bucket holding rank k is then known, and a second pass counts the low 16 bits
of the keys inside that one bucket, which pins the k-th score exactly. Two fixed 65,536-entry
tables per score (about 1 MiB) replace a sort of the whole column.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from affectflow.core.atomic import atomic_path, write_json

Mode = Literal["absolute", "minmax", "quantile"]

BUCKET_BITS = 16
BUCKETS = 1 << BUCKET_BITS
_LOW_MASK = np.uint32(BUCKETS - 1)
_SIGN = np.uint32(0x80000000)


def sortable_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the float32 order of the (finite) scores."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def score_of_key(key: int) -> float:
    """Inverse of `sortable_keys` for one key."""
    bits = key ^ 0x80000000 if key & 0x80000000 else key ^ 0xFFFFFFFF
    return float(np.uint32(bits).view(np.float32))


def quantile_rank(count: int, sigma: float) -> int:
    """1-based rank of the sigma-quantile, inverted-CDF definition (numpy's
    `method="inverted_cdf"`): the smallest score with at least a share sigma of scores <= it."""
    return min(count, max(1, math.ceil(count * sigma)))


@dataclass(frozen=True, eq=False)
class RankTable:
    """Key counts that give each score its share of dataset scores at or below it.

    Exact inside the bucket holding the threshold (so the matched decision is exact), linear
    within a bucket elsewhere (high 16 bits of a float32 = sign, exponent and 7 mantissa bits,
    i.e. better than 1% relative resolution).
    """

    high: np.ndarray
    bucket: int
    low_cumulative: np.ndarray

    def cdf(self, scores: np.ndarray) -> np.ndarray:
        keys = sortable_keys(scores)
        high = (keys >> BUCKET_BITS).astype(np.int64)
        low = (keys & _LOW_MASK).astype(np.int64)
        below = np.cumsum(self.high) - self.high
        within = np.where(high == self.bucket, self.low_cumulative[low],
                          self.high[high] * (low + 1) / BUCKETS)
        return (below[high] + within) / float(self.high.sum())


@dataclass(frozen=True, eq=False)
class ScoreScale:
    """How one score column is normalised and thresholded.

    A sample is matched when its normalised score is strictly greater than `threshold_norm`;
    `threshold_raw` is the same cut on the raw cosine scale (for reports and figures).
    """

    mode: Mode
    sigma: float
    count: int
    minimum: float
    maximum: float
    threshold_raw: float
    threshold_norm: float
    ranks: RankTable | None = None

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """float64 normalised scores (float64 keeps ranks k/n distinct for any dataset size)."""
        values = np.asarray(scores, dtype=np.float64)
        if self.mode == "absolute" or values.size == 0:
            return values
        if self.mode == "minmax":
            span = self.maximum - self.minimum
            # A constant column carries no information: everything normalises to 0.
            return (values - self.minimum) / span if span > 0 else np.zeros_like(values)
        assert self.ranks is not None, "quantile scale without rank table"
        return self.ranks.cdf(scores)

    def matched(self, norms: np.ndarray) -> np.ndarray:
        return norms > self.threshold_norm

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for summaries (NaN thresholds of an empty column become null)."""
        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {"mode": self.mode, "sigma": self.sigma, "count": self.count,
                "min": number(self.minimum), "max": number(self.maximum),
                "threshold_raw": number(self.threshold_raw),
                "threshold_norm": number(self.threshold_norm)}


class ScoreStatistics:
    """Accumulates one score column in one pass (two for `quantile`), then yields its scale."""

    def __init__(self, mode: Mode, sigma: float) -> None:
        self.mode = mode
        self.sigma = sigma
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.high = np.zeros(BUCKETS, dtype=np.int64) if mode == "quantile" else None
        self._bucket = -1
        self._rank_in_bucket = 0
        self._low: np.ndarray | None = None

    def add(self, scores: np.ndarray) -> None:
        """First pass: finite float32 scores of one shard."""
        if scores.size == 0:
            return
        self.count += int(scores.size)
        self.minimum = min(self.minimum, float(scores.min()))
        self.maximum = max(self.maximum, float(scores.max()))
        if self.high is not None:
            self.high += np.bincount(sortable_keys(scores) >> BUCKET_BITS, minlength=BUCKETS)

    @property
    def needs_bucket_pass(self) -> bool:
        return self.mode == "quantile" and self.count > 0

    def start_bucket_pass(self) -> None:
        """Find the high bucket holding the quantile's rank, before the second pass."""
        assert self.high is not None
        rank = quantile_rank(self.count, self.sigma)
        cumulative = np.cumsum(self.high)
        self._bucket = int(np.searchsorted(cumulative, rank))
        self._rank_in_bucket = rank - int(cumulative[self._bucket] - self.high[self._bucket])
        self._low = np.zeros(BUCKETS, dtype=np.int64)

    def add_to_bucket(self, scores: np.ndarray) -> None:
        """Second pass: count the low bits of the shard's keys that fall in the bucket."""
        assert self._low is not None, "call start_bucket_pass first"
        keys = sortable_keys(scores)
        inside = keys[(keys >> BUCKET_BITS) == self._bucket]
        self._low += np.bincount(inside & _LOW_MASK, minlength=BUCKETS)

    def scale(self) -> ScoreScale:
        facts: dict[str, Any] = {"mode": self.mode, "sigma": self.sigma, "count": self.count,
                                 "minimum": self.minimum if self.count else math.nan,
                                 "maximum": self.maximum if self.count else math.nan}
        if self.count == 0:
            return ScoreScale(**facts, threshold_raw=math.nan, threshold_norm=math.nan)
        if self.mode == "absolute":
            return ScoreScale(**facts, threshold_raw=self.sigma, threshold_norm=self.sigma)
        if self.mode == "minmax":
            span = self.maximum - self.minimum
            return ScoreScale(**facts, threshold_raw=self.minimum + self.sigma * span,
                              threshold_norm=self.sigma)
        assert self._low is not None and self.high is not None, "bucket pass was not run"
        low_cumulative = np.cumsum(self._low)
        low = int(np.searchsorted(low_cumulative, self._rank_in_bucket))
        below = int(self.high[:self._bucket].sum())
        ranks = RankTable(self.high, self._bucket, low_cumulative)
        return ScoreScale(**facts, threshold_raw=score_of_key((self._bucket << BUCKET_BITS) | low),
                          threshold_norm=(below + int(low_cumulative[low])) / self.count,
                          ranks=ranks)


def save_scales(folder: Path, scales: dict[str, ScoreScale]) -> None:
    """Write scales to the stage's plan folder: JSON facts plus rank tables as .npz."""
    facts = {}
    for name, scale in scales.items():
        facts[name] = {"mode": scale.mode, "sigma": scale.sigma, "count": scale.count,
                       "minimum": scale.minimum, "maximum": scale.maximum,
                       "threshold_raw": scale.threshold_raw,
                       "threshold_norm": scale.threshold_norm}
        if scale.ranks is not None:
            # A file handle, because np.savez appends ".npz" to a temporary file's name.
            with atomic_path(folder / f"ranks-{name}.npz") as tmp, open(tmp, "wb") as handle:
                np.savez(handle, high=scale.ranks.high, bucket=scale.ranks.bucket,
                         low_cumulative=scale.ranks.low_cumulative)
    write_json(folder / "scales.json", facts)


def load_scales(folder: Path) -> dict[str, ScoreScale]:
    facts = json.loads((folder / "scales.json").read_text())
    scales = {}
    for name, fields in facts.items():
        ranks = None
        rank_file = folder / f"ranks-{name}.npz"
        if rank_file.is_file():
            with np.load(rank_file) as data:
                ranks = RankTable(data["high"], int(data["bucket"]), data["low_cumulative"])
        scales[name] = ScoreScale(**fields, ranks=ranks)
    return scales
