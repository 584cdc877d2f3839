"""Data-parallel plumbing of the training jobs (PACL, CTERNet) under torchrun: one process per
GPU, or CPU ranks.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. With more than one process the group is
initialised with NCCL on GPUs and gloo on CPUs, and each process trains on its own device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from affectflow.models.encoder_runtime import resolve_device


@dataclass(frozen=True)
class DistContext:
    """This process's rank, the number of processes and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, global_batch: int) -> slice:
        """This rank's contiguous share of a global micro-batch (gathering restores the order)."""
        if global_batch % self.world_size:
            raise ValueError(f"a micro-batch of {global_batch} cannot be split over "
                             f"{self.world_size} processes")
        size = global_batch // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)


def single_process(device: str | torch.device | None = None) -> DistContext:
    return DistContext(rank=0, world_size=1, device=resolve_device(device))


def init_distributed(device: str | None = None) -> DistContext:
    """Join the torchrun process group (if WORLD_SIZE > 1); otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return single_process(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    resolved = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=resolved)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_data_parallel(model: nn.Module, context: DistContext, sync_batchnorm: bool) -> nn.Module:
    """DDP around the model when several processes train; BatchNorm synced on GPUs.

    PyTorch's SyncBatchNorm runs on GPUs only, so CPU ranks keep per-rank batch statistics
    (use a BatchNorm-free encoder when CPU ranks must match one process exactly).
    """
    if context.world_size == 1:
        return model
    if sync_batchnorm and context.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
