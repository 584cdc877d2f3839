"""Fine-tuning: the visual backbone plus a linear head trained end to end on the labelled set.

The backbone gets a lower learning rate than the fresh head (the paper: head 1e-2, backbone 1e-4
for ResNet-50 and 1e-5 for ViTs, 40 epochs), both under one cosine decay stepped per optimiser
step. The head and its loss are the task's (cross-entropy, binary cross-entropy, MSE, per-level
cross-entropy). Training views are random resized crops + flips drawn from seeded generators; val
uses the centre view after every epoch and the best val epoch's weights are kept (the task's val
score, ties to the lower val loss). The fitting function only receives train and val items; test
predictions are made afterwards.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from affectflow.core.loading import LoaderSettings
from affectflow.models.pacl.augment import ViewConfig, crop_boxes, eval_views, load_size, train_views
from affectflow.models.pacl.model import PaclModel
from affectflow.models.pacl.train import training_autocast
from affectflow.models.step_speed import DEFAULT_SPEED, FastStep
from affectflow.stages.pacl.images import PathImages
from affectflow.stages.probe.linear import BestEpoch, HeadTraining, lr_schedule
from affectflow.stages.probe.tasks import ProbeTask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledImages:
    """Image files, their sha256 (the pixel cache's keys), the task's training targets for them
    and their truth (for val scores)."""

    paths: list[str]
    sha256s: list[str]
    targets: Tensor
    truth: np.ndarray


@dataclass
class FineTuned:
    classifier: nn.Sequential
    selection: BestEpoch


def _eval_batches(paths: list[str], sha256s: list[str], view: ViewConfig, batch_size: int,
                  loading: LoaderSettings, device: torch.device) -> Iterator[Tensor]:
    """Centre views in order, `batch_size` at a time."""
    batches = list(torch.arange(len(paths)).split(batch_size))
    for squares in PathImages(paths, sha256s, loading, device).squares(
            batches, load_size(view.image_size)):
        yield eval_views(squares.to(device), view)


def classifier_outputs(classifier: nn.Module, paths: list[str], sha256s: list[str],
                       view: ViewConfig, batch_size: int, loading: LoaderSettings,
                       device: torch.device) -> Tensor:
    """Head outputs for the centre views of the images (files and their sha256), in order."""
    classifier.eval()
    outputs = []
    with torch.no_grad():
        for pixels in _eval_batches(paths, sha256s, view, batch_size, loading, device):
            with training_autocast(device):
                outputs.append(classifier(pixels).float().cpu())
    return torch.cat(outputs)


def fine_tune(model: PaclModel, task: ProbeTask, train: LabelledImages, val: LabelledImages,
              view: ViewConfig, training: HeadTraining, backbone_lr: float,
              loading: LoaderSettings, device: torch.device) -> FineTuned:
    """Train backbone + head on `train`, keep the weights of the best `val` epoch."""
    torch.manual_seed(training.seed)
    backbone = copy.deepcopy(model.visual)
    classifier = nn.Sequential(backbone, nn.Linear(model.image_projection.in_features, task.width))
    classifier.to(device)
    fast = FastStep(DEFAULT_SPEED, device, classifier)
    optimizer = torch.optim.AdamW([
        {"params": list(backbone.parameters()), "lr": backbone_lr},
        {"params": list(classifier[1].parameters()), "lr": training.lr},
    ], weight_decay=training.weight_decay, **fast.optimizer_options())
    generator = torch.Generator().manual_seed(training.seed)
    images = PathImages(train.paths, train.sha256s, loading, device)
    batch_size = min(training.batch_size, len(train.paths))
    scheduler = lr_schedule(optimizer, training, len(train.paths) // batch_size)
    side = load_size(view.image_size)
    selection, best_state = BestEpoch(), copy.deepcopy(classifier.state_dict())
    for epoch in range(training.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(train.paths), generator=generator)
        batches = list(order[: len(order) - len(order) % batch_size].split(batch_size))
        classifier.train()
        for batch, squares in zip(batches, images.squares(batches, side)):
            pixels = fast.inputs(train_views(squares.to(device),
                                             crop_boxes(len(batch), side, view, generator), view))
            with training_autocast(device):
                outputs = classifier(pixels)
            loss = task.loss(outputs.float(), train.targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_outputs = classifier_outputs(classifier, val.paths, val.sha256s, view,
                                         training.batch_size, loading, device)
        score = task.val_score(val_outputs, val.truth)
        if selection.record(score, float(task.loss(val_outputs, val.targets))):
            best_state = copy.deepcopy(classifier.state_dict())
        seconds = time.perf_counter() - started
        logger.info("fine-tuning epoch %d/%d: val %s %.3f, %.1f images/s", epoch + 1,
                    training.epochs, task.selection_name, score,
                    (len(train.paths) + len(val.paths)) / seconds)
    classifier.load_state_dict(best_state)
    return FineTuned(classifier=classifier.eval(), selection=selection)
