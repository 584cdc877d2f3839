"""Training checkpoints of CTERNet: the latest epoch (to resume) and the best one (to keep).

`last.pt` holds everything a resumed run needs to continue exactly where an uninterrupted one
would be: model, optimizer, scheduler, per-process RNG states, the epoch history and the best
epoch so far. `best.pt` holds the model of the best validation epoch. Each file carries a
signature of the training it belongs to, so a folder is never resumed into a different
training. Files are written atomically and loaded with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from affectflow.models.checkpoints import load_torch, save_torch

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


@dataclass
class ResumeState:
    """What `last.pt` restores besides the module/optimizer/scheduler state dicts."""

    epoch: int
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    weights_source: str


def save_last(work_dir: Path, signature: str, model: torch.nn.Module,
              optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
              rng_states: list[dict[str, Any]], resume: ResumeState) -> None:
    save_torch(work_dir / LAST_CHECKPOINT, {
        "signature": signature, "epoch": resume.epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_states, "history": resume.history, "best_epoch": resume.best_epoch,
        "best_val_accuracy": resume.best_val_accuracy, "weights_source": resume.weights_source,
    })


def save_best(work_dir: Path, signature: str, model: torch.nn.Module, epoch: int,
              val_accuracy: float) -> None:
    save_torch(work_dir / BEST_CHECKPOINT, {"signature": signature, "epoch": epoch,
                                            "val_accuracy": val_accuracy,
                                            "model": model.state_dict()})


def load_last(work_dir: Path, signature: str) -> dict[str, Any] | None:
    """The latest checkpoint of this training, or None when there is none yet."""
    path = work_dir / LAST_CHECKPOINT
    if not path.is_file():
        return None
    return _checked(path, load_torch(path), signature)


def load_best_model_state(work_dir: Path, signature: str) -> tuple[int, dict[str, torch.Tensor]]:
    """(epoch, model state dict) of the best validation epoch."""
    path = work_dir / BEST_CHECKPOINT
    checkpoint = _checked(path, load_torch(path), signature)
    return int(checkpoint["epoch"]), checkpoint["model"]


def resume_state(checkpoint: dict[str, Any]) -> ResumeState:
    return ResumeState(epoch=int(checkpoint["epoch"]), history=list(checkpoint["history"]),
                       best_epoch=int(checkpoint["best_epoch"]),
                       best_val_accuracy=float(checkpoint["best_val_accuracy"]),
                       weights_source=str(checkpoint["weights_source"]))


def _checked(path: Path, checkpoint: Any, signature: str) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or checkpoint.get("signature") != signature:
        raise ValueError(f"{path} belongs to a different training (other data, model or recipe); "
                         "delete it or train into another folder")
    return checkpoint
