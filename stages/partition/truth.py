"""Check a partition against planted ground truth (e.g. the demo's `ground_truth.csv`).

The positive class is a planted mismatch: a post whose text does not describe its image
(factual) or whose text emotion was flipped (emotional). A factual mismatch is found when the
sample lands in `partial_emotional` or `weak` (factual not matched); an emotional mismatch when
it lands in `partial_factual` or `weak`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Confusion:
    """Counts for one kind of mismatch; precision/recall are None when undefined (0/0)."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0

    def add(self, predicted: np.ndarray, actual: np.ndarray) -> None:
        missed, absent = np.logical_not(predicted), np.logical_not(actual)
        self.true_positive += int(np.sum(predicted & actual))
        self.false_positive += int(np.sum(predicted & absent))
        self.false_negative += int(np.sum(missed & actual))
        self.true_negative += int(np.sum(missed & absent))

    def report(self) -> dict[str, Any]:
        found = self.true_positive + self.false_positive
        planted = self.true_positive + self.false_negative
        return {"precision": self.true_positive / found if found else None,
                "recall": self.true_positive / planted if planted else None,
                "planted": planted, "flagged": found, "true_positive": self.true_positive}


@dataclass
class TruthCheck:
    """Streams (source_id, factual_matched, emotional_matched) shards against the truth."""

    truth: dict[str, tuple[bool, bool]]
    factual: Confusion = field(default_factory=Confusion)
    emotional: Confusion = field(default_factory=Confusion)
    same_partition: int = 0
    labelled: int = 0
    unlabelled: int = 0

    def add(self, source_ids: list[str | None], factual_matched: np.ndarray,
            emotional_matched: np.ndarray) -> None:
        labels = [self.truth.get(sid) if sid is not None else None for sid in source_ids]
        known = np.array([label is not None for label in labels], dtype=np.bool_)
        self.unlabelled += len(labels) - int(known.sum())
        if not known.any():
            return
        pairs = np.array([label for label in labels if label is not None], dtype=np.bool_)
        true_factual, true_emotional = pairs[:, 0], pairs[:, 1]
        found_factual, found_emotional = factual_matched[known], emotional_matched[known]
        self.factual.add(np.logical_not(found_factual), np.logical_not(true_factual))
        self.emotional.add(np.logical_not(found_emotional), np.logical_not(true_emotional))
        self.same_partition += int(np.sum((found_factual == true_factual)
                                          & (found_emotional == true_emotional)))
        self.labelled += int(known.sum())

    def report(self) -> dict[str, Any]:
        return {"factual_mismatch": self.factual.report(),
                "emotional_mismatch": self.emotional.report(),
                "partition_accuracy": self.same_partition / self.labelled if self.labelled else None,
                "labelled_samples": self.labelled, "unlabelled_samples": self.unlabelled}
