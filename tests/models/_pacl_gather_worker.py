"""Script run once per rank by the gloo test of gather_with_local_grad.

Usage: python _pacl_gather_worker.py <rank> <world_size> <work_dir> <candidates>. ``<work_dir>/batch.pt``
holds one global batch; each rank takes an equal slice, gathers the global batch back,
computes the PACL loss and saves it with its local gradient to ``<work_dir>/rank<r>.pt``.
A separate script keeps open_clip and pytest out of the worker processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from affectflow.models.pacl.losses import gather_with_local_grad, pacl_loss


def main(rank: int, world_size: int, work_dir: Path, candidates: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{work_dir / 'init'}", rank=rank, world_size=world_size)
    try:
        batch = torch.load(work_dir / "batch.pt", weights_only=True)
        local_size = batch["images"].shape[0] // world_size
        local = slice(local_size * rank, local_size * (rank + 1))
        local_images = batch["images"][local].clone().requires_grad_(True)
        images, texts, partition, factual, emotional = gather_with_local_grad(
            local_images, batch["texts"][local], batch["partition"][local],
            batch["factual"][local], batch["emotional"][local],
        )
        total, _ = pacl_loss(images, texts, partition, factual, emotional, candidates=candidates)
        total.backward()
        torch.save(
            {"gathered": images.detach(), "total": total.detach(), "grad": local_images.grad},
            work_dir / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
