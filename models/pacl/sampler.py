"""Partition-balanced batches: the same number of samples from every ACTIVE partition.

PACL's partitions differ in size (the paper: 22% strong, 51% partial, 27% weak), so a plain
random batch would let the largest partition dominate every loss term. Each micro-batch holds
`per_partition` samples from each active partition, in partition order. An epoch is one pass
over the largest active partition; smaller active partitions are resampled with replacement
(repeated, independently shuffled passes, so every sample recurs about equally often).

Plans depend only on (seed, epoch, partition ids), never on state carried between epochs, so a
resumed run redraws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from affectflow.models.pacl.losses import Partition

# Mixes the epoch into the seed; any odd constant larger than the epoch count works.
_EPOCH_STRIDE = 1_000_003


def partition_members(partition_ids: Tensor, active: Sequence[Partition]) -> dict[Partition, Tensor]:
    """Sample indices of every active partition that has at least one sample."""
    members = {part: torch.nonzero(partition_ids == int(part)).flatten() for part in active}
    return {part: indices for part, indices in members.items() if indices.numel()}


def steps_per_epoch(partition_ids: Tensor, active: Sequence[Partition], per_partition: int,
                    accumulation: int) -> int:
    """Optimiser steps in one pass over the largest active partition (at least one)."""
    members = partition_members(partition_ids, active)
    if not members:
        raise ValueError(f"no samples in any active partition {[p.key for p in active]}")
    largest = max(indices.numel() for indices in members.values())
    return max(1, largest // (per_partition * accumulation))


def _draw(indices: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """`count` members: one shuffled pass when there are enough, repeated passes otherwise."""
    passes = -(-count // indices.numel())
    order = torch.cat([torch.randperm(indices.numel(), generator=generator) for _ in range(passes)])
    return indices[order[:count]]


def epoch_plan(partition_ids: Tensor, active: Sequence[Partition], per_partition: int,
               accumulation: int, seed: int, epoch: int) -> Tensor:
    """(steps, accumulation, micro_batch) sample indices of one epoch.

    A micro-batch is `per_partition` samples of each active, non-empty partition, grouped by
    partition in `Partition` order.
    """
    if per_partition < 1 or accumulation < 1:
        raise ValueError(f"per_partition and accumulation must be >= 1, got {per_partition}, {accumulation}")
    members = partition_members(partition_ids, active)
    steps = steps_per_epoch(partition_ids, active, per_partition, accumulation)
    generator = torch.Generator().manual_seed(seed * _EPOCH_STRIDE + epoch)
    needed = steps * accumulation * per_partition
    blocks = [_draw(members[part], needed, generator).view(steps, accumulation, per_partition)
              for part in sorted(members)]
    return torch.cat(blocks, dim=2)
