"""Linear probe on frozen features: train on train, pick the epoch on val, never look at test.

Features are standardised with the TRAIN split's mean and standard deviation. The head is
trained with AdamW (the paper: lr 1e-2, 40 epochs) and evaluated on val after every epoch; the
epoch with the best val accuracy wins, ties going to the lower val cross-entropy, then to the
earlier epoch. The functions here never receive test data: the caller applies the selected
head to test afterwards.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadTraining:
    """Optimisation settings of a classification head."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    seed: int


@dataclass
class BestEpoch:
    """Tracks validation results per epoch and which epoch is best so far."""

    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    best: int = -1

    def record(self, accuracy: float, loss: float) -> bool:
        """Add one epoch's val results; True when it is the new best."""
        self.accuracy.append(accuracy)
        self.loss.append(loss)
        epoch = len(self.accuracy) - 1
        if self.best < 0 or (accuracy, -loss) > (self.accuracy[self.best], -self.loss[self.best]):
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

    def logits(self, features: np.ndarray) -> Tensor:
        with torch.no_grad():
            return self.head((torch.from_numpy(features).float() - self.mean) / self.std)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(dim=1).numpy()


def evaluate_head(head: nn.Module, features: Tensor, labels: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a head on standardised features."""
    with torch.no_grad():
        logits = head(features)
        loss = float(F.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return accuracy, loss


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                     val_y: np.ndarray, num_classes: int, training: HeadTraining) -> LinearProbe:
    """Train a linear head on train features, keeping the head of the best val epoch."""
    if not len(train_y) or not len(val_y):
        raise ValueError("the linear probe needs train and val samples")
    train = torch.from_numpy(train_x).float()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp(min=1e-6)
    train = (train - mean) / std
    val = (torch.from_numpy(val_x).float() - mean) / std
    train_labels, val_labels = torch.from_numpy(train_y).long(), torch.from_numpy(val_y).long()
    torch.manual_seed(training.seed)
    head = nn.Linear(train.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=training.lr,
                                  weight_decay=training.weight_decay)
    generator = torch.Generator().manual_seed(training.seed)
    selection, best_state = BestEpoch(), copy.deepcopy(head.state_dict())
    for _ in range(training.epochs):
        order = torch.randperm(len(train_labels), generator=generator)
        for start in range(0, len(order), training.batch_size):
            batch = order[start:start + training.batch_size]
            loss = F.cross_entropy(head(train[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if selection.record(*evaluate_head(head, val, val_labels)):
            best_state = copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return LinearProbe(mean=mean, std=std, head=head, selection=selection)
