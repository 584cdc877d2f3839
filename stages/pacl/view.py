"""The pacl stage's Prefect artifact: the loss curve and the losses of the first and last epoch
(mean over the epoch's steps; a partition's loss is empty before its phase starts)."""

from __future__ import annotations

import math

import pyarrow as pa

from affectflow.core.runs import RunStore
from affectflow.models.pacl.losses import ALL_PARTITIONS
from affectflow.stages.pacl.outputs import HISTORY, LOSS_CURVE_FILE
from affectflow.stages.views import MISSING, StageView, picture_markdown


def epoch_means(history: pa.Table, column: str) -> dict[int, float]:
    """Mean of a loss column per epoch over its non-NaN steps (epochs with none are left out)."""
    sums: dict[int, list[float]] = {}
    for epoch, value in zip(history["epoch"].to_pylist(), history[column].to_pylist()):
        if value is not None and not math.isnan(value):
            sums.setdefault(epoch, []).append(value)
    return {epoch: sum(values) / len(values) for epoch, values in sums.items()}


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def loss_markdown(run: RunStore) -> str:
    artifact = run.stage("pacl")
    summary = artifact.manifest["summary"]
    history = artifact.read_all(table=HISTORY)
    epochs = len(summary["epoch_steps"])
    phases = "; ".join(f"epochs {phase['epochs'][0] + 1}-{phase['epochs'][1] + 1}: "
                       + " + ".join(phase["active"]) for phase in summary["phases"])
    rate = summary["samples_per_s_mean"]
    lines = [f"### PACL pretraining of run `{run.run_id}`", "",
             f"{summary['steps']} optimiser steps over {epochs} epochs on "
             + ", ".join(f"{count} {name}" for name, count in summary["train_samples"].items())
             + f" training samples; {MISSING if rate is None else f'{rate:.1f}'} samples/s.", "",
             f"Phases: {phases}.", "",
             "| loss | first epoch (mean) | last epoch (mean) |", "| --- | ---: | ---: |"]
    columns = [("weighted total", "loss")] + [(f"L{int(part) + 1} {part.key}", f"loss_{part.key}")
                                              for part in ALL_PARTITIONS]
    for title, column in columns:
        means = epoch_means(history, column)
        lines.append(f"| {title} | {_number(means.get(0))} | {_number(means.get(epochs - 1))} |")
    lines += ["", *picture_markdown(artifact, LOSS_CURVE_FILE, "PACL loss curve")]
    return "\n".join(lines)


def prefect_views(run: RunStore, stage: str) -> list[StageView]:
    return [StageView("losses", f"PACL loss curve and final losses of run {run.run_id}",
                      markdown=loss_markdown(run))]
