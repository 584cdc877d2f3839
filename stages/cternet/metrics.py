"""CTERNet's test metrics beyond the shared ones: binary polarity accuracy, and the paper's
figures to compare with.

When the classes are exactly the FI set, the binary accuracy groups both the true and the
predicted class by polarity (positive = amusement, awe, contentment, excitement: the grouping of
the paper's binary FI labels). It scores the 8-class model's predictions, not a separately
trained binary classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FI_CLASSES = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear",
              "sadness")
FI_POSITIVE = frozenset({"amusement", "awe", "contentment", "excitement"})
# CTERNet paper, FI: 8-class and binary accuracy (%), res2net101 ImageNet-pretrained at 448 px.
PAPER_FI_ACCURACY = {"accuracy": 72.71, "binary_accuracy": 91.01}


def polarity(classes: Sequence[str]) -> np.ndarray | None:
    """Positive flag per class index when `classes` is the FI label set, else None."""
    if sorted(classes) != sorted(FI_CLASSES):
        return None
    return np.array([name in FI_POSITIVE for name in classes], dtype=bool)


def binary_accuracy(true: np.ndarray, predicted: np.ndarray,
                    classes: Sequence[str]) -> float | None:
    """Share of predictions of the right polarity (FI classes only; None otherwise)."""
    positive = polarity(classes)
    return float(np.mean(positive[true] == positive[predicted])) if positive is not None else None
