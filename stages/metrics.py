"""Evaluation metrics and confusion-matrix pictures, one home for every evaluating stage (the
probe's before/after table for every task kind of the PACL paper's Table 1, CTERNet's test report,
the knowledge labels), and the ROC AUC of a score against planted truth (the emotional score's
image texts).

Definitions are scikit-learn's:

- single-label (and each level of a hierarchical label): accuracy, weighted F1 (the papers'
  "F1"), per-class precision / recall / F1 / support with zero for undefined ratios, and the
  confusion matrix over a fixed class list (rows = true class, columns = predicted), so a class
  absent from the test data still gets its row;
- multi-label: per category the average precision (the area under the step precision-recall
  curve, `average_precision_score`) and the ROC AUC (`roc_auc_score`) of the category's scores;
  mAP and mean AUC average the categories where they are defined (AP needs a positive, AUC a
  positive and a negative), and the categories left out are listed;
- regression (VAD): per target the mean squared error and R^2 (`r2_score`, 1 - residual / total
  sum of squares), and their means over the targets.

Pictures use scikit-learn's `ConfusionMatrixDisplay`: colours are the share of the true class's
row (so classes of different sizes compare), cells show count and share, with a colour bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
    roc_curve,
)

from affectflow.stages.pictures import new_figure, save_png


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationMetrics:
    """Test metrics of class-index predictions over a fixed list of classes."""

    samples: int
    accuracy: float
    weighted_f1: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_metrics(true: np.ndarray, predicted: np.ndarray,
                           classes: Sequence[str]) -> ClassificationMetrics:
    """Metrics of predicted class indices against true ones, over classes 0..len(classes)-1."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    if true.shape != predicted.shape or true.ndim != 1 or not len(true):
        raise ValueError(f"true and predicted must be equal non-empty 1-d arrays, got "
                         f"{true.shape} and {predicted.shape}")
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=labels, zero_division=0)
    return ClassificationMetrics(
        samples=len(true),
        accuracy=float(accuracy_score(true, predicted)),
        weighted_f1=float(f1_score(true, predicted, labels=labels, average="weighted",
                                   zero_division=0)),
        per_class=[ClassMetrics(name, float(p), float(r), float(f), int(s))
                   for name, p, r, f, s in zip(classes, precision, recall, f1, support)],
        confusion=confusion_matrix(true, predicted, labels=labels).tolist())


@dataclass(frozen=True)
class CategoryMetrics:
    name: str
    average_precision: float | None  # None: no positive in the data
    roc_auc: float | None  # None: no positive or no negative
    positives: int


@dataclass(frozen=True)
class MultiLabelMetrics:
    """Ranking metrics of per-category scores against multi-hot truth."""

    samples: int
    mean_average_precision: float
    mean_roc_auc: float
    per_category: list[CategoryMetrics]
    undefined_ap: list[str]  # categories left out of mAP
    undefined_auc: list[str]  # categories left out of the mean AUC

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def multilabel_metrics(true: np.ndarray, scores: np.ndarray,
                       categories: Sequence[str]) -> MultiLabelMetrics:
    """AP and ROC AUC per category of `scores` (any monotone score: probabilities, logits,
    cosines) against 0/1 `true`, both (samples, categories)."""
    true, scores = np.asarray(true), np.asarray(scores, dtype=np.float64)
    if true.shape != scores.shape or true.ndim != 2 or true.shape[1] != len(categories) \
            or not len(true):
        raise ValueError(f"true and scores must both be (samples, {len(categories)}) with "
                         f"samples > 0, got {true.shape} and {scores.shape}")
    if not np.isin(true, (0, 1)).all():
        raise ValueError("multi-label truth must be 0/1")
    if not np.isfinite(scores).all():
        raise ValueError("multi-label scores must be finite")
    rows = []
    for index, name in enumerate(categories):
        column, score = true[:, index], scores[:, index]
        positives = int(column.sum())
        ap = float(average_precision_score(column, score)) if positives else None
        auc = roc_auc(score, column == 1)
        rows.append(CategoryMetrics(name, ap, auc, positives))
    aps = [row.average_precision for row in rows if row.average_precision is not None]
    aucs = [row.roc_auc for row in rows if row.roc_auc is not None]
    if not aps or not aucs:
        raise ValueError("no category has both positives and negatives in the data, so neither "
                         "mAP nor AUC is defined")
    return MultiLabelMetrics(
        samples=len(true), mean_average_precision=float(np.mean(aps)),
        mean_roc_auc=float(np.mean(aucs)), per_category=rows,
        undefined_ap=[row.name for row in rows if row.average_precision is None],
        undefined_auc=[row.name for row in rows if row.roc_auc is None])


@dataclass(frozen=True)
class TargetMetrics:
    name: str
    mse: float
    r2: float


@dataclass(frozen=True)
class RegressionMetrics:
    """Errors of predicted continuous targets (e.g. valence, arousal, dominance)."""

    samples: int
    mean_mse: float
    mean_r2: float
    per_target: list[TargetMetrics]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def regression_metrics(true: np.ndarray, predicted: np.ndarray,
                       targets: Sequence[str]) -> RegressionMetrics:
    """MSE and R^2 per target column of (samples, targets) arrays, and their plain means."""
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if true.shape != predicted.shape or true.ndim != 2 or true.shape[1] != len(targets) \
            or len(true) < 2:
        raise ValueError(f"true and predicted must both be (samples, {len(targets)}) with at "
                         f"least 2 samples, got {true.shape} and {predicted.shape}")
    if not (np.isfinite(true).all() and np.isfinite(predicted).all()):
        raise ValueError("regression truth and predictions must be finite")
    mse = mean_squared_error(true, predicted, multioutput="raw_values")
    r2 = r2_score(true, predicted, multioutput="raw_values")
    return RegressionMetrics(
        samples=len(true), mean_mse=float(np.mean(mse)), mean_r2=float(np.mean(r2)),
        per_target=[TargetMetrics(name, float(m), float(r)) for name, m, r in zip(targets, mse, r2)])


def draw_confusions(path: Path, panels: Sequence[tuple[str, Sequence[Sequence[int]]]],
                    classes: Sequence[str]) -> None:
    """One PNG with a confusion matrix per (title, matrix) panel side by side, sharing one
    colour scale (share of the true class) and its colour bar."""
    size = 1.6 + 0.55 * len(classes)
    figure = new_figure(figsize=(size * len(panels) + 1.4, size + 0.4))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for axis, (title, confusion) in zip(axes, panels):
        counts = np.asarray(confusion, dtype=np.int64)
        rows = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        display = ConfusionMatrixDisplay(shares, display_labels=list(classes))
        display.plot(ax=axis, cmap="Blues", colorbar=False, values_format=".2f",
                     im_kw={"vmin": 0.0, "vmax": 1.0}, xticks_rotation=45)
        for (row, column), text in np.ndenumerate(display.text_):
            text.set_text(f"{counts[row, column]}\n{shares[row, column]:.0%}")
            text.set_fontsize(7)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        image = display.im_
    assert image is not None, "draw_confusions needs at least one panel"
    figure.colorbar(image, ax=list(axes), label="share of the true class", shrink=0.8)
    save_png(figure, path, dpi=100, tight=True)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for the boolean `positives` (the chance that a
    positive scores above a negative, ties counting half); None unless both classes occur."""
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return None
    return float(roc_auc_score(positives, np.asarray(scores, dtype=np.float64)))


def draw_roc_curves(path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
                    title: str) -> None:
    """One PNG with the ROC curve of each (label, scores, positives), its AUC in the legend, and
    the chance diagonal."""
    figure = new_figure(figsize=(5.2, 4.6))
    axis = figure.subplots()
    for label, scores, positives in curves:
        false_positive, true_positive, _ = roc_curve(np.asarray(positives, dtype=bool), scores)
        axis.plot(false_positive, true_positive,
                  label=f"{label} (AUC {roc_auc(scores, positives):.3f}, n={len(scores)})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="lower right")
    save_png(figure, path, dpi=100, tight=True)
