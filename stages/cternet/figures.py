"""Pictures of CTERNet training: loss and accuracy curves (the confusion matrix is drawn by
stages/metrics.py, as for every evaluating stage).

Drawn on matplotlib's Agg canvas directly (no pyplot global state), safe in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from affectflow.models.cternet.train import EpochStats
from affectflow.stages.pictures import new_figure, save_png


def draw_training_curves(history: Sequence[EpochStats], best_epoch: int, path: Path) -> None:
    """Training loss (left) and train / validation accuracy (right) per epoch, best epoch marked."""
    epochs = [row.epoch for row in history]
    figure = new_figure(figsize=(9, 3.6))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row.train_loss for row in history], marker="o", color="tab:red")
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="loss")
    accuracy_axes.plot(epochs, [row.train_accuracy for row in history], marker="o", label="train")
    accuracy_axes.plot(epochs, [row.val_accuracy for row in history], marker="s", label="val")
    accuracy_axes.axvline(best_epoch, color="grey", linestyle="--",
                          label=f"selected ({best_epoch})")
    accuracy_axes.set(title="accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    accuracy_axes.legend(loc="lower right")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    save_png(figure, path, tight=True)
