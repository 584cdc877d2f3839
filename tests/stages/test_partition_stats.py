"""Streaming score statistics: exact quantiles from two bounded histogram passes."""

from __future__ import annotations

import numpy as np
import pytest

from affectflow.stages.partition.stats import ScoreStatistics, load_scales, save_scales, score_of_key, sortable_keys


def fit(values: np.ndarray, mode: str, sigma: float, shards: int = 5) -> ScoreStatistics:
    """Feed `values` in uneven shards through both passes, as the stage's prepare does."""
    cuts: np.ndarray | list[int] = (
        np.sort(np.random.default_rng(1).choice(np.arange(1, len(values)), shards - 1,
                                                replace=False)) if len(values) > shards else [])
    pieces = np.split(values.astype(np.float32), cuts)
    stats = ScoreStatistics(mode, sigma)  # type: ignore[arg-type]
    for piece in pieces:
        stats.add(piece)
    if stats.needs_bucket_pass:
        stats.start_bucket_pass()
        for piece in pieces:
            stats.add_to_bucket(piece)
    return stats


def test_keys_sort_like_the_floats_and_invert() -> None:
    values = np.array([-np.inf, -3.5, -1e-40, -0.0, 0.0, 1e-45, 0.25, 0.7, 3e38, np.inf],
                      dtype=np.float32)
    keys = sortable_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) > 0)
    assert [score_of_key(int(k)) for k in keys] == values.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_quantile_threshold_equals_numpy_inverted_cdf(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.2, 0.1, 3000), rng.uniform(-1, 1, 500),
                             np.round(rng.normal(0.3, 0.05, 1500), 2)]).astype(np.float32)
    rng.shuffle(values)
    for sigma in (0.0, 0.01, 0.3, 0.5, 0.7, 0.99, 1.0):
        scale = fit(values, "quantile", sigma).scale()
        expected = np.quantile(values, sigma, method="inverted_cdf")
        assert scale.threshold_raw == expected
        assert scale.threshold_norm == np.mean(values <= expected)
        norms = scale.normalise(values)
        assert np.array_equal(scale.matched(norms), values > expected)


def test_quantile_norm_is_a_monotone_cdf_estimate() -> None:
    values = np.random.default_rng(5).normal(0.25, 0.06, 20_000).astype(np.float32)
    scale = fit(values, "quantile", 0.5).scale()
    norms = scale.normalise(values)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(norms[order]) >= 0)
    exact = np.searchsorted(np.sort(values), values, side="right") / len(values)
    assert np.max(np.abs(norms - exact)) < 0.01
    assert norms.min() > 0 and norms.max() <= 1.0


def test_minmax_and_absolute_scales() -> None:
    values = np.array([0.0, 0.25, 0.5, 1.0], dtype=np.float32) * 0.5 + 0.1
    minmax = fit(values, "minmax", 0.5, shards=2).scale()
    assert minmax.normalise(values).tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert minmax.threshold_raw == pytest.approx(0.35)
    absolute = fit(values, "absolute", 0.3, shards=2).scale()
    assert absolute.normalise(values).tolist() == values.astype(np.float64).tolist()
    assert absolute.threshold_raw == absolute.threshold_norm == 0.3


def test_empty_column_gives_undefined_thresholds() -> None:
    scale = fit(np.array([], dtype=np.float32), "quantile", 0.5).scale()
    assert scale.count == 0 and scale.describe()["threshold_raw"] is None
    assert scale.normalise(np.array([], dtype=np.float32)).size == 0


def test_scales_round_trip_through_the_plan_folder(tmp_path) -> None:
    values = np.random.default_rng(2).normal(size=1000).astype(np.float32)
    scales = {"factual": fit(values, "quantile", 0.4).scale(),
              "emotional": fit(values, "minmax", 0.6).scale()}
    save_scales(tmp_path, scales)
    loaded = load_scales(tmp_path)
    for name, scale in scales.items():
        assert loaded[name].describe() == scale.describe()
        assert np.array_equal(loaded[name].normalise(values), scale.normalise(values))
