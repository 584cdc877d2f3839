"""Fine-tuning: the visual backbone plus a linear head trained end to end on the labelled set.

The backbone gets a lower learning rate than the fresh head (the paper: 1e-4 for ResNet-50,
1e-5 for ViTs). Training views are random resized crops + flips drawn from seeded generators;
val uses the centre view after every epoch and the best val epoch's weights are kept. The
fitting function only receives train and val items; test predictions are made afterwards.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affectflow.models.pacl.augment import ViewConfig, crop_boxes, eval_views, load_size, load_square, train_views
from affectflow.models.pacl.model import PaclModel
from affectflow.models.pacl.train import training_autocast
from affectflow.stages.batching import prefetched_image_batches
from affectflow.stages.pacl.images import ImageChangedError, PathImages
from affectflow.stages.probe.linear import BestEpoch, HeadTraining

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledImages:
    """Image files and their class indices."""

    paths: list[str]
    labels: np.ndarray


@dataclass
class FineTuned:
    classifier: nn.Sequential
    selection: BestEpoch


def _eval_batches(paths: list[str], view: ViewConfig, batch_size: int,
                  workers: int) -> Iterator[Tensor]:
    side = load_size(view.image_size)
    for batch in prefetched_image_batches(paths, batch_size, partial(load_square, side=side), workers):
        if batch.failures or batch.pixels is None:
            index, error = batch.failures[0]
            raise ImageChangedError(f"{paths[index]} no longer loads ({error})")
        yield eval_views(batch.pixels, view)


def classifier_logits(classifier: nn.Module, paths: list[str], view: ViewConfig, batch_size: int,
                      workers: int, device: torch.device) -> Tensor:
    """Logits of the centre views of `paths`, in order."""
    classifier.eval()
    outputs = []
    with torch.no_grad():
        for pixels in _eval_batches(paths, view, batch_size, workers):
            with training_autocast(device):
                outputs.append(classifier(pixels.to(device)).float().cpu())
    return torch.cat(outputs)


def fine_tune(model: PaclModel, num_classes: int, train: LabelledImages, val: LabelledImages,
              view: ViewConfig, training: HeadTraining, backbone_lr: float, workers: int,
              device: torch.device) -> FineTuned:
    """Train backbone + head on `train`, keep the weights of the best `val` epoch."""
    torch.manual_seed(training.seed)
    backbone = copy.deepcopy(model.visual)
    classifier = nn.Sequential(backbone, nn.Linear(model.image_projection.in_features, num_classes))
    classifier.to(device)
    optimizer = torch.optim.AdamW([
        {"params": list(backbone.parameters()), "lr": backbone_lr},
        {"params": list(classifier[1].parameters()), "lr": training.lr},
    ], weight_decay=training.weight_decay)
    generator = torch.Generator().manual_seed(training.seed)
    images = PathImages(train.paths, workers)
    labels = torch.from_numpy(train.labels).long()
    batch_size = min(training.batch_size, len(train.paths))
    side = load_size(view.image_size)
    selection, best_state = BestEpoch(), copy.deepcopy(classifier.state_dict())
    for epoch in range(training.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(train.paths), generator=generator)
        batches = list(order[: len(order) - len(order) % batch_size].split(batch_size))
        classifier.train()
        for batch, squares in zip(batches, images.squares(batches, side)):
            pixels = train_views(squares, crop_boxes(len(batch), side, view, generator), view)
            with training_autocast(device):
                logits = classifier(pixels.to(device))
            loss = F.cross_entropy(logits.float(), labels[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_logits = classifier_logits(classifier, val.paths, view, training.batch_size, workers,
                                       device)
        val_labels = torch.from_numpy(val.labels).long()
        accuracy = float((val_logits.argmax(dim=1) == val_labels).float().mean())
        if selection.record(accuracy, float(F.cross_entropy(val_logits, val_labels))):
            best_state = copy.deepcopy(classifier.state_dict())
        seconds = time.perf_counter() - started
        logger.info("fine-tuning epoch %d/%d: val accuracy %.3f, %.1f images/s", epoch + 1,
                    training.epochs, accuracy, (len(train.paths) + len(val.paths)) / seconds)
    classifier.load_state_dict(best_state)
    return FineTuned(classifier=classifier.eval(), selection=selection)
