"""Linear probe on frozen features: train on train, pick the epoch on val, never look at test.

Features are standardised with the TRAIN split's mean and standard deviation. The head (one
output per class, category, target or level class: the task decides) is trained with AdamW
(the paper: lr 1e-2, 40 epochs) under a cosine decay stepped per optimiser step, and evaluated
on val after every epoch; the epoch with the best val score (the task's: accuracy, mAP, -MSE,
mean level accuracy) wins, ties going to the lower val loss, then to the earlier epoch. The
functions here never receive test data: the caller applies the selected head to test afterwards.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from affectflow.stages.probe.tasks import ProbeTask

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.optim.lr_scheduler import LRScheduler

Schedule = Literal["cosine", "constant"]


@dataclass(frozen=True)
class HeadTraining:
    """Optimisation settings of a head (and, when fine-tuning, of the backbone under it)."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    seed: int
    schedule: Schedule = "cosine"


def lr_schedule(optimizer: torch.optim.Optimizer, training: HeadTraining,
                steps_per_epoch: int) -> LRScheduler:
    """Cosine decay to zero over all optimiser steps (no warm-up), or a constant lr."""
    from torch.optim.lr_scheduler import LambdaLR

    from affectflow.models.pacl.schedule import WarmupCosine

    total = max(1, training.epochs * steps_per_epoch)
    if training.schedule == "constant":
        return LambdaLR(optimizer, lambda step: 1.0)
    return LambdaLR(optimizer, WarmupCosine(total, 0, 0.0))


@dataclass
class BestEpoch:
    """Tracks validation results per epoch and which epoch is best so far."""

    score: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    best: int = -1

    def record(self, score: float, loss: float) -> bool:
        """Add one epoch's val results (score: higher is better); True when it is the new best."""
        self.score.append(score)
        self.loss.append(loss)
        epoch = len(self.score) - 1
        if self.best < 0 or (score, -loss) > (self.score[self.best], -self.loss[self.best]):
            self.best = epoch
            return True
        return False


@dataclass
class LinearProbe:
    """A fitted probe: train-split standardisation, the selected head and the val curve."""

    mean: Tensor
    std: Tensor
    head: nn.Linear
    selection: BestEpoch

    def outputs(self, features: np.ndarray) -> Tensor:
        import torch

        with torch.no_grad():
            return self.head((torch.from_numpy(features).float() - self.mean) / self.std)


def fit_linear_probe(train_x: np.ndarray, train_targets: Tensor, val_x: np.ndarray,
                     val_targets: Tensor, val_truth: np.ndarray, task: ProbeTask,
                     training: HeadTraining) -> LinearProbe:
    """Train a linear head on train features, keeping the head of the best val epoch."""
    from affectflow.models.encoder_runtime import intra_op_threads

    if not len(train_targets) or not len(val_targets):
        raise ValueError("the linear probe needs train and val samples")
    with intra_op_threads(1):
        return train_linear_head(train_x, train_targets, val_x, val_targets, val_truth, task, training)


def train_linear_head(train_x: np.ndarray, train_targets: Tensor, val_x: np.ndarray,
                      val_targets: Tensor, val_truth: np.ndarray, task: ProbeTask,
                      training: HeadTraining) -> LinearProbe:
    """`fit_linear_probe` on the caller's torch threads (bench/probe_linear.py compares them)."""
    import torch
    from torch import nn

    train = torch.from_numpy(train_x).float()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp(min=1e-6)
    train = (train - mean) / std
    val = (torch.from_numpy(val_x).float() - mean) / std
    torch.manual_seed(training.seed)
    head = nn.Linear(train.shape[1], task.width)
    optimizer = torch.optim.AdamW(head.parameters(), lr=training.lr,
                                  weight_decay=training.weight_decay)
    scheduler = lr_schedule(optimizer, training, math.ceil(len(train) / training.batch_size))
    generator = torch.Generator().manual_seed(training.seed)
    selection, best_state = BestEpoch(), copy.deepcopy(head.state_dict())
    for _ in range(training.epochs):
        order = torch.randperm(len(train_targets), generator=generator)
        for start in range(0, len(order), training.batch_size):
            batch = order[start:start + training.batch_size]
            loss = task.loss(head(train[batch]), train_targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            outputs = head(val)
            val_loss = float(task.loss(outputs, val_targets))
        if selection.record(task.val_score(outputs, val_truth), val_loss):
            best_state = copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return LinearProbe(mean=mean, std=std, head=head, selection=selection)
