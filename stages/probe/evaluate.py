"""The downstream evaluations of one encoder on one task of a labelled set with train/val/test splits.

Linear evaluation and fine-tuning fit on train and select their epoch on val; zero-shot fits
nothing and reports val beside test. Test rows reach none of the fitting functions: the kept
model is applied to them once, and their truth feeds nothing but the reported test metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from affectflow.core.loading import LoaderSettings
from affectflow.models.pacl.augment import ViewConfig
from affectflow.models.pacl.model import PaclModel
from affectflow.stages.ingest.stage import TEST, TRAIN, VAL
from affectflow.stages.probe.finetune import LabelledImages, classifier_outputs, fine_tune
from affectflow.stages.probe.linear import HeadTraining, fit_linear_probe
from affectflow.stages.probe.tasks import ProbeTask, Scores
from affectflow.stages.probe.zeroshot import PromptVariant, zero_shot_cosines


@dataclass
class ProbeSet:
    """The labelled samples: split, image path and sha256, and frozen backbone features per
    encoder."""

    sample_ids: np.ndarray
    splits: np.ndarray
    paths: list[str]
    sha256s: list[str]
    features: dict[str, np.ndarray]

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def images(self, split: str, task: ProbeTask) -> LabelledImages:
        chosen = self.rows(split)
        return LabelledImages([self.paths[i] for i in chosen], [self.sha256s[i] for i in chosen],
                              task.targets(chosen),
                              task.truth[chosen])


@dataclass
class EvaluationResult:
    """Test and val metrics of one evaluation of one encoder, and the epoch kept."""

    test: Any
    val: Any
    best_epoch: int | None  # 0-based; None for zero-shot (nothing is trained)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the manifest; epochs are counted from 1 there, as in results.md."""
        epoch = None if self.best_epoch is None else self.best_epoch + 1
        return {"test": self.test.as_dict(), "val": self.val.as_dict(), "best_epoch": epoch}


@dataclass
class Evaluated:
    result: EvaluationResult
    test_scores: Scores
    calibrated: bool  # trained heads give probabilities; zero-shot gives cosines


def _evaluated(data: ProbeSet, task: ProbeTask, val_scores: Scores, test_scores: Scores,
               best_epoch: int | None, calibrated: bool = True) -> Evaluated:
    val, test = data.rows(VAL), data.rows(TEST)
    return Evaluated(EvaluationResult(task.metrics(test_scores, task.truth[test]),
                                      task.metrics(val_scores, task.truth[val]), best_epoch),
                     test_scores, calibrated)


def linear_evaluation(data: ProbeSet, task: ProbeTask, encoder: str,
                      training: HeadTraining) -> Evaluated:
    features = data.features[encoder]
    train, val, test = (data.rows(split) for split in (TRAIN, VAL, TEST))
    probe = fit_linear_probe(features[train], task.targets(train), features[val],
                             task.targets(val), task.truth[val], task, training)
    return _evaluated(data, task, task.scores(probe.outputs(features[val])),
                      task.scores(probe.outputs(features[test])), probe.selection.best)


def finetune_evaluation(data: ProbeSet, task: ProbeTask, model: PaclModel, view: ViewConfig,
                        training: HeadTraining, backbone_lr: float, loading: LoaderSettings,
                        device: torch.device) -> Evaluated:
    val = data.images(VAL, task)
    tuned = fine_tune(model, task, data.images(TRAIN, task), val, view, training, backbone_lr,
                      loading, device)

    def scores(rows: np.ndarray) -> Scores:
        return task.scores(classifier_outputs(
            tuned.classifier, [data.paths[i] for i in rows], [data.sha256s[i] for i in rows],
            view, training.batch_size, loading, device))

    return _evaluated(data, task, scores(data.rows(VAL)), scores(data.rows(TEST)),
                      tuned.selection.best)


def zero_shot_evaluation(data: ProbeSet, task: ProbeTask, encoder: str, model: PaclModel,
                         prompts: list[Tensor], variant: PromptVariant) -> Evaluated:
    """`prompts`: one (classes, templates, text_dim) tensor per block of `task.prompt_classes`."""
    features = data.features[encoder]

    def scores(split: str) -> Scores:
        chosen = features[data.rows(split)]
        return task.zero_shot_scores([zero_shot_cosines(model, chosen, block, variant)
                                      for block in prompts])

    return _evaluated(data, task, scores(VAL), scores(TEST), None, calibrated=False)


def split_counts(data: ProbeSet) -> dict[str, int]:
    return {split: len(data.rows(split)) for split in (TRAIN, VAL, TEST)}
