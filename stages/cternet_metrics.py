"""Test-set metrics of an image-sentiment classifier, and the paper's figures to compare with.

Accuracy over all classes, weighted F1, per-class precision / recall / F1 and the confusion
matrix (scikit-learn's definitions). When the classes are exactly the FI set, the binary
accuracy groups both the true and the predicted class by polarity (positive = amusement, awe,
contentment, excitement: the grouping of the paper's binary FI labels). It scores the 8-class
model's predictions, not a separately trained binary classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

FI_CLASSES = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear",
              "sadness")
FI_POSITIVE = frozenset({"amusement", "awe", "contentment", "excitement"})
# CTERNet paper, FI: 8-class and binary accuracy (%), res2net101 ImageNet-pretrained at 448 px.
PAPER_FI_ACCURACY = {"accuracy": 72.71, "binary_accuracy": 91.01}


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationMetrics:
    samples: int
    accuracy: float
    binary_accuracy: float | None
    weighted_f1: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def polarity(classes: Sequence[str]) -> np.ndarray | None:
    """Positive flag per class index when `classes` is the FI label set, else None."""
    if sorted(classes) != sorted(FI_CLASSES):
        return None
    return np.array([name in FI_POSITIVE for name in classes], dtype=bool)


def compute_metrics(true: np.ndarray, predicted: np.ndarray,
                    classes: Sequence[str]) -> ClassificationMetrics:
    """Metrics of class-index predictions; classes absent from the test data get zero scores."""
    if len(true) == 0:
        raise ValueError("no test predictions to score")
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=indices, zero_division=0)
    positive = polarity(classes)
    binary = (float(np.mean(positive[true] == positive[predicted]))
              if positive is not None else None)
    return ClassificationMetrics(
        samples=int(len(true)),
        accuracy=float(np.mean(true == predicted)),
        binary_accuracy=binary,
        weighted_f1=float(f1_score(true, predicted, labels=indices, average="weighted",
                                   zero_division=0)),
        per_class=[ClassMetrics(name, float(p), float(r), float(f), int(s))
                   for name, p, r, f, s in zip(classes, precision, recall, f1, support)],
        confusion=confusion_matrix(true, predicted, labels=indices).tolist(),
    )
