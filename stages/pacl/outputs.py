"""What the `pacl` stage leaves behind: models, the backbone alone, history table, loss curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from affectflow.core.atomic import write_parquet
from affectflow.core.store import shard_name
from affectflow.models.pacl.losses import ALL_PARTITIONS

HISTORY = "history"
MODEL_FILE = "model.pt"
INITIAL_MODEL_FILE = "initial_model.pt"
BACKBONE_FILE = "backbone.pt"
LOSS_CURVE_FILE = "loss_curve.png"

HISTORY_SCHEMA = pa.schema([
    ("step", pa.int64()), ("epoch", pa.int32()), ("active", pa.string()), ("loss", pa.float64()),
    *[(f"loss_{part.key}", pa.float64()) for part in ALL_PARTITIONS],
    ("lr_backbone", pa.float64()), ("lr_heads", pa.float64()), ("grad_norm", pa.float64()),
    ("samples_per_s", pa.float64()),
])


def write_models(output_dir: Path, final: dict[str, Any], initial: dict[str, Any],
                 extra_config: dict[str, Any]) -> None:
    """model.pt and initial_model.pt (rebuildable by `load_model`), and backbone.pt.

    backbone.pt is the visual tower's plain state dict: a timm model created with
    num_classes=0 (e.g. `timm:<name>:<run>/pacl/backbone.pt`) or an open_clip `.visual`
    tower loads it directly.
    """
    from affectflow.models.checkpoints import save_torch

    for name, record in ((MODEL_FILE, final), (INITIAL_MODEL_FILE, initial)):
        save_torch(output_dir / name, {"config": {**record["config"], **extra_config},
                                       "state_dict": record["state_dict"]})
    prefix = "visual."
    save_torch(output_dir / BACKBONE_FILE, {key[len(prefix):]: value
                                            for key, value in final["state_dict"].items()
                                            if key.startswith(prefix)})


def write_history(output_dir: Path, history: dict[str, list[Any]]) -> pa.Table:
    table = pa.table({name: pa.array(history[name], field.type)
                      for name, field in zip(HISTORY_SCHEMA.names, HISTORY_SCHEMA)})
    write_parquet(output_dir / HISTORY / shard_name(0), table)
    return table


def draw_loss_curve(path: Path, history: dict[str, list[Any]], epoch_steps: list[int]) -> None:
    """Total and per-partition losses per step, with the phase switches marked; lr below.

    """
    from affectflow.stages.pictures import new_figure, save_png

    steps = history["step"]
    figure = new_figure(figsize=(8, 6))
    losses, rates = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    losses.plot(steps, history["loss"], color="black", linewidth=1.5, label="weighted total")
    for part in ALL_PARTITIONS:
        values = history[f"loss_{part.key}"]
        if any(not math.isnan(value) for value in values):
            losses.plot(steps, values, linewidth=1, label=f"L{int(part) + 1} {part.key}")
    boundaries, phases, previous = [], [], None
    for epoch_index, step in enumerate(_epoch_starts(epoch_steps)):
        active = _active_at(history, epoch_index)
        if active is not None and active != previous:
            boundaries.append(step)
            phases.append(active)
            previous = active
    for step in boundaries[1:]:
        for axis in (losses, rates):
            axis.axvline(step + 0.5, color="grey", linestyle="--", linewidth=0.8)
    losses.set_ylabel("loss")
    losses.set_title("PACL pretraining, phases: " + " | ".join(_loss_names(phase) for phase in phases),
                     fontsize=9)
    losses.legend(fontsize=8)
    rates.plot(steps, history["lr_backbone"], label="backbone lr")
    rates.plot(steps, history["lr_heads"], label="heads lr")
    rates.set_xlabel("optimiser step")
    rates.set_ylabel("lr")
    rates.legend(fontsize=8)
    figure.tight_layout()
    save_png(figure, path, dpi=100)


def _loss_names(active: str) -> str:
    """'strong,partial_emotional' -> 'L1+L2' (the paper's loss numbering)."""
    numbers = {part.key: int(part) + 1 for part in ALL_PARTITIONS}
    return "+".join(f"L{numbers[key]}" for key in active.split(","))


def _epoch_starts(epoch_steps: list[int]) -> list[int]:
    starts, total = [], 0
    for count in epoch_steps:
        starts.append(total)
        total += count
    return starts


def _active_at(history: dict[str, list[Any]], epoch: int) -> str | None:
    for row_epoch, active in zip(history["epoch"], history["active"]):
        if row_epoch == epoch:
            return active
    return None


def training_summary(history: dict[str, list[Any]], epoch_steps: list[int],
                     partition_counts: dict[str, int], resumed_at_step: int) -> dict[str, Any]:
    """Counts, schedule and losses for the manifest."""
    phases: dict[str, list[int]] = {}
    for epoch in range(len(epoch_steps)):
        active = _active_at(history, epoch)
        if active is not None:
            phases.setdefault(active, []).append(epoch)
    rates = history["samples_per_s"]
    return {
        "train_samples": partition_counts,
        "steps": len(history["step"]), "epoch_steps": epoch_steps,
        "phases": [{"active": active.split(","), "epochs": [epochs[0], epochs[-1]]}
                   for active, epochs in phases.items()],
        "loss_first": history["loss"][0] if history["loss"] else None,
        "loss_last": history["loss"][-1] if history["loss"] else None,
        "samples_per_s_mean": sum(rates) / len(rates) if rates else None,
        "resumed_at_step": resumed_at_step,
        "files": [MODEL_FILE, INITIAL_MODEL_FILE, BACKBONE_FILE, LOSS_CURVE_FILE],
    }
