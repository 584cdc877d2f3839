"""The three downstream evaluations of one encoder on a labelled set with train/val/test splits.

Each evaluation fits on train (linear, fine-tuning), selects on val, and only then predicts
test; test labels are used for nothing but the reported metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from affectflow.models.pacl.augment import ViewConfig
from affectflow.models.pacl.model import PaclModel
from affectflow.stages.ingest.stage import TEST, TRAIN, VAL
from affectflow.stages.metrics import classification_metrics
from affectflow.stages.probe.finetune import LabelledImages, classifier_logits, fine_tune
from affectflow.stages.probe.linear import HeadTraining, fit_linear_probe
from affectflow.stages.probe.report import EvaluationResult
from affectflow.stages.probe.zeroshot import zero_shot_logits


@dataclass
class ProbeSet:
    """The labelled samples: split, class index, image path and frozen features per encoder."""

    sample_ids: np.ndarray
    splits: np.ndarray
    labels: np.ndarray
    paths: list[str]
    features: dict[str, np.ndarray]
    class_names: list[str]

    def mask(self, split: str) -> np.ndarray:
        return self.splits == split

    def images(self, split: str) -> LabelledImages:
        chosen = np.flatnonzero(self.mask(split))
        return LabelledImages([self.paths[i] for i in chosen], self.labels[chosen])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Evaluated:
    result: EvaluationResult
    test_predictions: np.ndarray


def _evaluated(data: ProbeSet, test_predictions: np.ndarray, val_accuracy: float,
               best_epoch: int | None) -> Evaluated:
    metrics = classification_metrics(data.labels[data.mask(TEST)], test_predictions,
                                     data.class_names)
    return Evaluated(EvaluationResult(metrics, val_accuracy, best_epoch), test_predictions)


def linear_evaluation(data: ProbeSet, encoder: str, training: HeadTraining) -> Evaluated:
    features = data.features[encoder]
    train, val, test = (data.mask(split) for split in (TRAIN, VAL, TEST))
    probe = fit_linear_probe(features[train], data.labels[train], features[val], data.labels[val],
                             data.num_classes, training)
    best = probe.selection.best
    return _evaluated(data, probe.predict(features[test]), probe.selection.accuracy[best], best)


def zero_shot_evaluation(data: ProbeSet, encoder: str, model: PaclModel,
                         prompts: Tensor) -> Evaluated:
    features = data.features[encoder]
    val, test = data.mask(VAL), data.mask(TEST)
    val_predictions = zero_shot_logits(model, features[val], prompts).argmax(dim=1).numpy()
    val_accuracy = float((val_predictions == data.labels[val]).mean())
    test_predictions = zero_shot_logits(model, features[test], prompts).argmax(dim=1).numpy()
    return _evaluated(data, test_predictions, val_accuracy, None)


def finetune_evaluation(data: ProbeSet, model: PaclModel, view: ViewConfig, training: HeadTraining,
                        backbone_lr: float, workers: int, device: torch.device) -> Evaluated:
    tuned = fine_tune(model, data.num_classes, data.images(TRAIN), data.images(VAL), view,
                      training, backbone_lr, workers, device)
    test = data.images(TEST)
    logits = classifier_logits(tuned.classifier, test.paths, view, training.batch_size, workers,
                               device)
    best = tuned.selection.best
    return _evaluated(data, logits.argmax(dim=1).numpy(), tuned.selection.accuracy[best], best)


def split_counts(data: ProbeSet) -> dict[str, Any]:
    return {split: int(data.mask(split).sum()) for split in (TRAIN, VAL, TEST)}
