"""Multi-process CTERNet training through torchrun (DistributedDataParallel).

The caller writes a job file (model config, recipe, image lists, work folder) and `launch`
starts `torchrun ... --nproc-per-node=N -m affectflow.models.cternet_distributed JOB` on this
node (`core/torchrun.py`: one node, or several meeting at a rendezvous). Each process joins the
group (NCCL on GPUs, gloo on CPU), trains its share through `train_cternet`, and process 0 leaves
checkpoints and `outcome.json` in the work folder, which the caller reads back with
`read_outcome`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from affectflow.core.atomic import write_json
from affectflow.core.torchrun import ONE_NODE, TorchrunNodes, run_torchrun, torchrun_command
from affectflow.models.cternet_classifier import config_values
from affectflow.models.cternet_config import CTERNetConfig
from affectflow.models.cternet_data import LabelledImages
from affectflow.models.cternet_train import Runtime, TrainingRecipe, train_cternet

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


def write_job(path: Path, job: TrainingJob) -> None:
    write_json(path, {
        "config": config_values(job.config), "recipe": dataclasses.asdict(job.recipe),
        "train": {"paths": job.train.paths, "labels": job.train.labels},
        "val": {"paths": job.val.paths, "labels": job.val.labels},
        "work_dir": str(job.work_dir), "device": job.device,
        "loader_workers": job.loader_workers, "cpu_threads": job.cpu_threads,
    })


def read_job(path: Path) -> TrainingJob:
    record = json.loads(path.read_text(encoding="utf-8"))
    recipe = dict(record["recipe"], crop_scale=tuple(record["recipe"]["crop_scale"]))
    return TrainingJob(
        config=CTERNetConfig.from_mapping(record["config"]), recipe=TrainingRecipe(**recipe),
        train=LabelledImages(tuple(record["train"]["paths"]), tuple(record["train"]["labels"])),
        val=LabelledImages(tuple(record["val"]["paths"]), tuple(record["val"]["labels"])),
        work_dir=Path(record["work_dir"]), device=record["device"],
        loader_workers=int(record["loader_workers"]), cpu_threads=record["cpu_threads"])


def launch(job_path: Path, processes: int, nodes: TorchrunNodes = ONE_NODE) -> None:
    """Run the job on `processes` processes of this node (of each of `nodes`) and wait; their
    logs go to this stderr."""
    code = run_torchrun(torchrun_command(__name__, job_path, processes, nodes))
    if code != 0:
        raise RuntimeError(f"distributed CTERNet training failed (exit code {code}; "
                           f"see the log above); rerunning resumes from the last checkpoint")


def _process_device(requested: str | None, local_rank: int) -> str:
    """One GPU per process when GPUs are used, else the CPU."""
    use_gpu = torch.cuda.is_available() and (requested is None or requested.startswith("cuda"))
    if use_gpu:
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    job = read_job(Path((argv if argv is not None else sys.argv[1:])[0]))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    device = _process_device(job.device, int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        train_cternet(job.config, job.recipe, job.train, job.val, job.work_dir,
                      Runtime(device=device, loader_workers=job.loader_workers, rank=rank,
                              world_size=world_size, cpu_threads=job.cpu_threads))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
