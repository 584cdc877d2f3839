"""Multi-process CTERNet training through torchrun (DistributedDataParallel).

The caller writes a job file (model config, recipe, image lists, work folder) and `launch`
starts `torchrun ... --nproc-per-node=N -m affectflow.models.cternet.distributed JOB` on this
node (`core/torchrun.py`: one node, or several meeting at a rendezvous). Each process joins the
group (`models/distributed.py`: NCCL on GPUs, gloo on CPU), trains its share through
`train_cternet`, and process 0 leaves checkpoints and `outcome.json` in the work folder, which
the caller reads back with `read_outcome`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.atomic import write_json
from affectflow.core.pixel_cache import PixelCache
from affectflow.core.pixels import Decoder
from affectflow.core.torchrun import ONE_NODE, TorchrunNodes, launch_job, worker_main
from affectflow.models.cternet.classifier import config_values
from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.data import LabelledImages
from affectflow.models.cternet.train import Runtime, TrainingRecipe, train_cternet
from affectflow.models.distributed import init_distributed, shutdown_distributed
from affectflow.models.step_speed import DEFAULT_SPEED, StepSpeed

JOB_FILE = "job.json"


@dataclass(frozen=True)
class TrainingJob:
    """Everything one training process needs, as plain JSON-able values."""

    config: CTERNetConfig
    recipe: TrainingRecipe
    train: LabelledImages
    val: LabelledImages
    work_dir: Path
    device: str | None
    loader_workers: int
    cpu_threads: int | None
    cache: PixelCache | None = None
    decoder: Decoder = "pil"
    speed: StepSpeed = DEFAULT_SPEED


def _images(images: LabelledImages) -> dict[str, Any]:
    return {"paths": images.paths, "labels": images.labels, "sha256s": images.sha256s}


def _read_images(record: dict[str, Any]) -> LabelledImages:
    hashes = record.get("sha256s")
    return LabelledImages(tuple(record["paths"]), tuple(record["labels"]),
                          tuple(hashes) if hashes is not None else None)


def write_job(path: Path, job: TrainingJob) -> None:
    write_json(path, {
        "config": config_values(job.config), "recipe": dataclasses.asdict(job.recipe),
        "train": _images(job.train), "val": _images(job.val),
        "work_dir": str(job.work_dir), "device": job.device,
        "loader_workers": job.loader_workers, "cpu_threads": job.cpu_threads,
        "cache": job.cache.to_dict() if job.cache is not None else None, "decoder": job.decoder,
        "speed": job.speed.to_dict(),
    })


def read_job(path: Path) -> TrainingJob:
    record = json.loads(path.read_text(encoding="utf-8"))
    recipe = dict(record["recipe"], crop_scale=tuple(record["recipe"]["crop_scale"]))
    cache = PixelCache.from_dict(record["cache"]) if record["cache"] is not None else None
    return TrainingJob(
        config=CTERNetConfig.from_mapping(record["config"]), recipe=TrainingRecipe(**recipe),
        train=_read_images(record["train"]), val=_read_images(record["val"]),
        work_dir=Path(record["work_dir"]), device=record["device"],
        loader_workers=int(record["loader_workers"]), cpu_threads=record["cpu_threads"],
        cache=cache, decoder=record["decoder"], speed=StepSpeed.from_dict(record["speed"]))


def launch(job_path: Path, processes: int, nodes: TorchrunNodes = ONE_NODE) -> None:
    """Run the job on `processes` processes of this node (of each of `nodes`) and wait; their
    logs go to this stderr."""
    launch_job(__name__, job_path, processes, nodes, "distributed CTERNet training")


def run_job(path: Path) -> None:
    """One training process: join the group, train its share, leave the group."""
    job = read_job(path)
    context = init_distributed(job.device)
    try:
        train_cternet(job.config, job.recipe, job.train, job.val, job.work_dir,
                      Runtime(device=str(context.device), loader_workers=job.loader_workers,
                              rank=context.rank, world_size=context.world_size,
                              cpu_threads=job.cpu_threads, cache=job.cache, decoder=job.decoder,
                              speed=job.speed))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    worker_main(sys.argv[1:], __spec__.name, run_job)
