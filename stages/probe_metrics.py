"""Single-label classification metrics (the paper reports accuracy and weighted F1) and the
confusion-matrix picture. Computed from the confusion matrix in numpy; the tests check them
against scikit-learn."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from affectflow.core.atomic import write_bytes


@dataclass(frozen=True)
class Metrics:
    """Accuracy, weighted F1, per-class precision/recall/F1/support and the confusion matrix
    (rows = true class, columns = predicted class)."""

    accuracy: float
    weighted_f1: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy, "weighted_f1": self.weighted_f1,
            "per_class": {name: {"precision": float(self.precision[i]), "recall": float(self.recall[i]),
                                 "f1": float(self.f1[i]), "support": int(self.support[i])}
                          for i, name in enumerate(class_names)},
            "confusion": self.confusion.tolist(),
        }


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_metrics(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> Metrics:
    """Metrics of predicted class indices against true ones, over classes 0..num_classes-1."""
    if true.shape != predicted.shape or true.ndim != 1 or not len(true):
        raise ValueError(f"true and predicted must be equal non-empty 1-d arrays, got "
                         f"{true.shape} and {predicted.shape}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    hits = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = _safe_divide(hits, confusion.sum(axis=0).astype(np.float64))
    recall = _safe_divide(hits, support.astype(np.float64))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    weighted_f1 = float((f1 * support).sum() / support.sum())
    return Metrics(accuracy=float(hits.sum() / len(true)), weighted_f1=weighted_f1,
                   precision=precision, recall=recall, f1=f1, support=support, confusion=confusion)


def draw_confusion(path: Path, confusion: np.ndarray, class_names: list[str], title: str) -> None:
    """Row-normalised confusion matrix with the counts written in the cells."""
    figure = Figure(figsize=(1.0 + 0.6 * len(class_names), 0.8 + 0.6 * len(class_names)))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            axis.text(column, row, str(confusion[row, column]), ha="center", va="center",
                      fontsize=8, color="white" if rates[row, column] > 0.5 else "black")
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())
