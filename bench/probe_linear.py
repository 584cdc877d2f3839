"""The probe's linear head on one CPU thread (what `fit_linear_probe` uses) vs torch's default
thread count, on ResNet-50-sized pooled features.

Both sides run the same training loop (`stages/probe/linear.py`) on the same features, side by
side in one process; the ratio is default-threads seconds / one-thread seconds, so above 1 means
one thread is faster. A linear head on pooled features is a stream of small matmuls: extra
threads only add synchronisation, which on a busy machine (threads spinning while they wait for
each other) costs far more than it saves.
"""

from __future__ import annotations

import numpy as np
import torch

from affectflow.models.encoder_runtime import intra_op_threads
from affectflow.stages.probe.linear import HeadTraining, train_linear_head
from affectflow.stages.probe.tasks import SingleLabel
from bench.common import BenchRow, timed

# One thread must not be slower than torch's default (the reason the probe pins it).
TARGET = 1.0


def run(quick: bool = False) -> list[BenchRow]:
    rng = np.random.default_rng(0)
    rows, dim, classes = (2000, 2048, 8) if quick else (8000, 2048, 8)
    labels = np.arange(rows) % classes
    features = (rng.normal(size=(classes, dim))[labels] + rng.normal(size=(rows, dim))).astype(np.float32)
    train, val = np.arange(rows) < rows * 0.8, np.arange(rows) >= rows * 0.8
    task = SingleLabel(labels, [f"c{i}" for i in range(classes)])
    training = HeadTraining(epochs=2 if quick else 5, lr=1e-2, batch_size=64, weight_decay=0.0,
                            seed=0)
    rows_train, rows_val = np.flatnonzero(train), np.flatnonzero(val)

    def fit() -> object:
        return train_linear_head(features[train], task.targets(rows_train), features[val],
                    task.targets(rows_val), labels[val], task, training)

    threads = torch.get_num_threads()
    _, default_seconds = timed(fit, repeats=2)
    with intra_op_threads(1):
        _, one_seconds = timed(fit, repeats=2)
    ratio = default_seconds / one_seconds
    return [BenchRow("probe linear head: default threads / 1 thread", ratio, TARGET,
                     detail=f"{rows} x {dim} features, {training.epochs} epochs: {threads} threads "
                            f"{default_seconds:.2f}s, 1 thread {one_seconds:.2f}s",
                     extra={"default_seconds": default_seconds, "one_thread_seconds": one_seconds})]
