"""The polarity (positive / negative) of each dataset's emotion labels: the one place they are
written down (docs/cternet.md shows the same table).

Used twice: `task: polarity` trains and evaluates a 2-class model on these polarities (the
paper's binary results, Table 2), and an emotion model's predictions are grouped by them for
the "polarity of the N-class predictions" figure, which is not a binary model's accuracy.

- FI and ArtPhoto share Mikels' eight emotions: positive = amusement, awe, contentment,
  excitement; negative = anger, disgust, fear, sadness (ArtPhoto's own name for it: sad).
- Emotion6 has Ekman's six plus neutral: positive = joy, surprise; negative = anger, disgust,
  fear, sadness; neutral has no polarity (such rows are rejected as `no_polarity`).
- Twitter II is labelled by polarity already.

Labels are matched case-insensitively (dataset folders are often capitalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

POSITIVE = "positive"
NEGATIVE = "negative"
POLARITY_CLASSES: tuple[str, ...] = (NEGATIVE, POSITIVE)

PolarityMap = Literal["fi", "emotion6", "artphoto", "twitter2"]
Task = Literal["emotion", "polarity"]
_MIKELS = {"amusement": POSITIVE, "awe": POSITIVE, "contentment": POSITIVE,
           "excitement": POSITIVE, "anger": NEGATIVE, "disgust": NEGATIVE, "fear": NEGATIVE,
           "sadness": NEGATIVE}
POLARITY_MAPS: dict[str, dict[str, str | None]] = {
    "fi": _MIKELS,
    "artphoto": {**_MIKELS, "sad": NEGATIVE},
    "emotion6": {"joy": POSITIVE, "surprise": POSITIVE, "anger": NEGATIVE, "disgust": NEGATIVE,
                 "fear": NEGATIVE, "sadness": NEGATIVE, "neutral": None},
    "twitter2": {POSITIVE: POSITIVE, NEGATIVE: NEGATIVE},
}


class NoPolarity(ValueError):
    """A label the map knows but gives no polarity (Emotion6's neutral), or one it does not know;
    `reason` is the reject reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def polarity_of(map_name: str, label: str) -> str:
    """`positive` or `negative`; NoPolarity when the label has none under `map_name`."""
    mapping = POLARITY_MAPS[map_name]
    key = label.strip().lower()
    if key not in mapping:
        raise NoPolarity("label_not_in_polarity_map",
                         f"label {label!r} is not one of polarity map {map_name!r}'s labels "
                         f"{sorted(mapping)}")
    polarity = mapping[key]
    if polarity is None:
        raise NoPolarity("no_polarity", f"label {label!r} has no polarity in map {map_name!r}")
    return polarity


def class_polarities(map_name: str, classes: Sequence[str]) -> list[str] | None:
    """The polarity of each class, in class order; None when some class has none."""
    try:
        return [polarity_of(map_name, name) for name in classes]
    except NoPolarity:
        return None


def target_class(task: Task, map_name: str | None, label: str) -> str:
    """The class a labelled row is trained and scored on: its label (`emotion`), or the label's
    polarity (`polarity`, NoPolarity when it has none)."""
    if task == "emotion":
        return label
    if map_name is None:
        raise ValueError("task polarity needs a polarity map")
    return polarity_of(map_name, label)
