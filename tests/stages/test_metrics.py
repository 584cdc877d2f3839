"""The shared metrics, checked against their definitions counted by hand (loops over samples and
thresholds, never scikit-learn, so the checks are not circular)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectflow.stages.metrics import classification_metrics, draw_confusions, multilabel_metrics, regression_metrics


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


def _average_precision_by_hand(truth: list[int], scores: list[float]) -> float:
    """AP = sum over thresholds t (each distinct score, high to low) of
    (recall(t) - recall(previous t)) * precision(t), counting every sample scored >= t."""
    positives = sum(truth)
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [t for t, s in zip(truth, scores) if s >= threshold]
        hits = sum(chosen)
        precision, recall = hits / len(chosen), hits / positives
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def _auc_by_hand(truth: list[int], scores: list[float]) -> float:
    """The probability that a random positive scores above a random negative, ties half."""
    pairs = [(p, n) for p, tp in zip(scores, truth) if tp for n, tn in zip(scores, truth) if not tn]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_metrics_follow_their_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples, categories = 40, 5
    truth = (rng.random((samples, categories)) < 0.35).astype(int)
    truth[:, 3] = 0  # a category with no positive: AP undefined
    truth[:, 4] = 1  # a category with no negative: AUC undefined
    scores = np.round(truth * 0.6 + rng.random((samples, categories)), 1)  # rounding makes ties
    names = [f"c{i}" for i in range(categories)]
    metrics = multilabel_metrics(truth, scores, names)
    aps, aucs = [], []
    for c in range(categories):
        column, score = truth[:, c].tolist(), scores[:, c].tolist()
        row = metrics.per_category[c]
        assert row.positives == sum(column)
        if sum(column):
            aps.append(_average_precision_by_hand(column, score))
            assert row.average_precision == pytest.approx(aps[-1])
        else:
            assert row.average_precision is None
        if 0 < sum(column) < samples:
            aucs.append(_auc_by_hand(column, score))
            assert row.roc_auc == pytest.approx(aucs[-1])
        else:
            assert row.roc_auc is None
    assert metrics.mean_average_precision == pytest.approx(sum(aps) / len(aps))
    assert metrics.mean_roc_auc == pytest.approx(sum(aucs) / len(aucs))
    assert metrics.undefined_ap == ["c3"] and metrics.undefined_auc == ["c3", "c4"]


def test_multilabel_metrics_of_a_perfect_and_a_reversed_ranking() -> None:
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    perfect = multilabel_metrics(truth, truth + 0.0, ["a", "b"])
    assert perfect.mean_average_precision == 1.0 and perfect.mean_roc_auc == 1.0
    assert multilabel_metrics(truth, -truth + 0.0, ["a", "b"]).mean_roc_auc == 0.0


def test_multilabel_metrics_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(np.array([[2, 0], [0, 1]]), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        multilabel_metrics(np.array([[1, 0], [0, 1]]), np.array([[np.nan, 0], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="samples"):
        multilabel_metrics(np.array([[1, 0]]), np.zeros((1, 3)), ["a", "b"])


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_follow_their_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(1, 9, size=(30, 3))
    predicted = truth + rng.normal(scale=[0.5, 1.5, 4.0], size=(30, 3))
    metrics = regression_metrics(truth, predicted, ["valence", "arousal", "dominance"])
    mses, r2s = [], []
    for d in range(3):
        true_d, pred_d = truth[:, d].tolist(), predicted[:, d].tolist()
        squared = sum((t - p) ** 2 for t, p in zip(true_d, pred_d))
        mean = sum(true_d) / len(true_d)
        spread = sum((t - mean) ** 2 for t in true_d)
        mses.append(squared / len(true_d))
        r2s.append(1 - squared / spread)
        assert metrics.per_target[d].mse == pytest.approx(mses[-1])
        assert metrics.per_target[d].r2 == pytest.approx(r2s[-1])
    assert metrics.mean_mse == pytest.approx(sum(mses) / 3)
    assert metrics.mean_r2 == pytest.approx(sum(r2s) / 3)
    assert metrics.per_target[2].r2 < metrics.per_target[0].r2  # noisier target, lower R^2
    with pytest.raises(ValueError, match="finite"):
        regression_metrics(truth, np.full_like(truth, np.inf), ["v", "a", "d"])


def test_confusion_figure_has_one_panel_per_matrix_and_a_colour_bar(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    draw_confusions(one, [("x", [[3, 1, 0], [0, 2, 2], [1, 0, 5]])], classes)
    draw_confusions(two, [("x", [[3, 1, 0], [0, 2, 2], [1, 0, 5]]),
                          ("y", [[4, 0, 0], [0, 4, 0], [0, 0, 6]])], classes)
    with Image.open(one) as single, Image.open(two) as double:
        assert double.width > 1.4 * single.width
