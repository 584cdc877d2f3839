"""CTERNet's test metrics beyond the shared ones: the polarity of an emotion model's predictions,
and the paper's figures to compare with.

`grouped_polarity_accuracy` maps both the true and the predicted class of an N-class emotion
model to its polarity (stages/cternet/polarity.py) and scores the agreement. It is not the
accuracy of a binary model: the paper's binary figures (Table 2) come from models trained on
polarity labels, which is `task: polarity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from affectflow.stages.cternet.polarity import POSITIVE, class_polarities

# CTERNet paper, Res2Net-101 ImageNet-pretrained at 448 px: test accuracy (%) per dataset, of
# the emotion task (FI 8 classes, Emotion6 6) and of the binary polarity task (Table 2).
PAPER_ACCURACY: dict[str, dict[str, float]] = {
    "fi": {"emotion": 72.71, "polarity": 91.01},
    "emotion6": {"emotion": 60.49, "polarity": 83.67},
    "artphoto": {"polarity": 79.27},
    "twitter2": {"polarity": 83.33},
}


def grouped_polarity_accuracy(true: np.ndarray, predicted: np.ndarray, classes: Sequence[str],
                              map_name: str) -> float | None:
    """Share of predictions of the right polarity; None when a class has no polarity."""
    polarities = class_polarities(map_name, classes)
    if polarities is None:
        return None
    positive = np.array([polarity == POSITIVE for polarity in polarities], dtype=bool)
    return float(np.mean(positive[true] == positive[predicted]))
