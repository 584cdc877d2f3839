"""Classification metrics and confusion-matrix pictures, one home for every evaluating stage
(the probe's before/after table, CTERNet's test report).

Definitions are scikit-learn's: accuracy, weighted F1 (the papers' "F1"), per-class precision /
recall / F1 / support with zero for undefined ratios, and the confusion matrix over a fixed class
list (rows = true class, columns = predicted), so a class absent from the test data still gets
its row. Pictures use scikit-learn's `ConfusionMatrixDisplay`: colours are the share of the true
class's row (so classes of different sizes compare), cells show count and share, with a colour
bar.
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
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
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
