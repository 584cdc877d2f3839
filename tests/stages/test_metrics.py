"""The shared classification metrics, checked against their definitions counted by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectflow.stages.metrics import classification_metrics, draw_confusions


def _by_hand(true: list[int], predicted: list[int], classes: int) -> dict[str, list[float]]:
    """Precision, recall, F1 and support per class from explicit counts (0 where undefined)."""
    out: dict[str, list[float]] = {"precision": [], "recall": [], "f1": [], "support": []}
    for c in range(classes):
        tp = sum(1 for t, p in zip(true, predicted) if t == c and p == c)
        fp = sum(1 for t, p in zip(true, predicted) if t != c and p == c)
        fn = sum(1 for t, p in zip(true, predicted) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out["precision"].append(precision)
        out["recall"].append(recall)
        out["f1"].append(f1)
        out["support"].append(float(tp + fn))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_follow_their_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 5, 60)
    predicted = np.where(rng.random(60) < 0.6, true, rng.integers(0, 4, 60))  # 4 never predicted
    classes = [f"c{i}" for i in range(6)]  # class 5 absent entirely
    metrics = classification_metrics(true, predicted, classes)
    expected = _by_hand(true.tolist(), predicted.tolist(), 6)
    assert metrics.samples == 60
    assert metrics.accuracy == pytest.approx(float(np.mean(true == predicted)))
    for name in ("precision", "recall", "f1", "support"):
        assert [getattr(row, name) for row in metrics.per_class] == pytest.approx(expected[name])
    support = np.array(expected["support"])
    assert metrics.weighted_f1 == pytest.approx(float((np.array(expected["f1"]) * support).sum()
                                                      / support.sum()))
    assert metrics.per_class[5].support == 0 and metrics.per_class[5].f1 == 0.0
    for t in range(6):
        for p in range(6):
            count = int(np.sum((true == t) & (predicted == p)))
            assert metrics.confusion[t][p] == count


def test_metrics_refuse_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="equal non-empty"):
        classification_metrics(np.array([0, 1]), np.array([0]), ["a", "b"])


def test_confusion_figure_has_one_panel_per_matrix_and_a_colour_bar(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    draw_confusions(one, [("x", [[3, 1, 0], [0, 2, 2], [1, 0, 5]])], classes)
    draw_confusions(two, [("x", [[3, 1, 0], [0, 2, 2], [1, 0, 5]]),
                          ("y", [[4, 0, 0], [0, 4, 0], [0, 0, 6]])], classes)
    with Image.open(one) as single, Image.open(two) as double:
        assert double.width > 1.4 * single.width
