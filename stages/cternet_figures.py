"""Pictures of CTERNet training and evaluation: loss/accuracy curves and the confusion matrix.

Drawn on matplotlib's Agg canvas directly (no pyplot global state), safe in worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from affectflow.core.atomic import write_bytes
from affectflow.models.cternet_train import EpochStats


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def draw_training_curves(history: Sequence[EpochStats], best_epoch: int, path: Path) -> None:
    """Training loss (left) and train / validation accuracy (right) per epoch, best epoch marked."""
    epochs = [row.epoch for row in history]
    figure = Figure(figsize=(9, 3.6))
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
    _save(figure, path)


def draw_confusion_matrix(confusion: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Counts per (true, predicted) class, shaded by the share of the true class's row."""
    rows = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    size = 1.6 + 0.6 * len(classes)
    figure = Figure(figsize=(size + 1.2, size))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of true class")
    ticks = range(len(classes))
    axes.set_xticks(ticks, list(classes), rotation=45, ha="right")
    axes.set_yticks(ticks, list(classes))
    axes.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    for true in ticks:
        for predicted in ticks:
            axes.text(predicted, true, str(int(confusion[true, predicted])), ha="center",
                      va="center", color="white" if shares[true, predicted] > 0.5 else "black")
    _save(figure, path)
