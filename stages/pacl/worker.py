"""One PACL training job: its files, the process that runs it, and the torchrun launcher.

The stage writes a job folder (`job.json` with the training config and loader settings: worker
processes, the pixel cache and the JPEG decoder; `train_set.pt` with image paths and hashes,
text features and labels). `run_job` trains from those files,
in the stage's own process or as one rank of `torchrun ... -m affectflow.stages.pacl.worker
<job folder>` (`core/torchrun.py`, one or several nodes); both paths run the same code. Rank 0
writes `checkpoints/final.pt` (model, history), which the stage turns into its outputs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.atomic import write_json
from affectflow.core.loading import LoaderSettings
from affectflow.core.torchrun import ONE_NODE, TorchrunNodes, launch_job, runs_in_process, worker_main
from affectflow.models.checkpoints import load_torch, save_torch
from affectflow.models.distributed import init_distributed, shutdown_distributed
from affectflow.models.encoder_runtime import intra_op_threads
from affectflow.models.pacl.checkpoint import FINAL_FILE
from affectflow.models.pacl.train import PaclTrainConfig, PaclTrainingSet, TrainHooks, train_pacl
from affectflow.models.step_speed import DEFAULT_SPEED, StepSpeed
from affectflow.stages.pacl.images import PathImages

JOB_FILE = "job.json"
TRAIN_SET_FILE = "train_set.pt"
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class TrainingJob:
    """A prepared job folder."""

    folder: Path

    @property
    def checkpoints(self) -> Path:
        return self.folder / CHECKPOINT_DIR

    @property
    def result_file(self) -> Path:
        return self.checkpoints / FINAL_FILE


def write_job(folder: Path, config: PaclTrainConfig, images: list[tuple[str, str]],
              training: PaclTrainingSet, loading: LoaderSettings, device: str | None,
              cpu_threads: int | None, speed: StepSpeed = DEFAULT_SPEED) -> TrainingJob:
    """Write the job's files (same inputs give the same files, so a resumed job matches);
    `images` are (path, sha256) per training sample."""
    save_torch(folder / TRAIN_SET_FILE, {
        "image_paths": [path for path, _ in images], "image_sha256": [sha for _, sha in images],
        "text_features": training.text_features, "partition": training.partition,
        "factual_cluster": training.factual_cluster, "emotional_cluster": training.emotional_cluster})
    write_json(folder / JOB_FILE, {"config": config.to_dict(), "loading": loading.to_dict(),
                                   "device": device, "cpu_threads": cpu_threads,
                                   "speed": speed.to_dict()})
    return TrainingJob(folder)


def run_job(folder: Path, hooks: TrainHooks | None = None) -> None:
    """Train from a job folder (resuming from its checkpoint) and write `final.pt` on rank 0."""
    job = TrainingJob(folder)
    spec: dict[str, Any] = json.loads((folder / JOB_FILE).read_text())
    payload = load_torch(folder / TRAIN_SET_FILE)
    training = PaclTrainingSet(payload["text_features"], payload["partition"],
                               payload["factual_cluster"], payload["emotional_cluster"])
    loading = LoaderSettings.from_dict(spec["loading"])
    context = init_distributed(spec["device"])
    try:
        images = PathImages(payload["image_paths"], payload["image_sha256"], loading,
                            context.device)
        with intra_op_threads(spec["cpu_threads"]):
            result = train_pacl(PaclTrainConfig.from_dict(spec["config"]), training, images,
                                job.checkpoints, context, hooks, StepSpeed.from_dict(spec["speed"]))
        if context.is_main:
            save_torch(job.result_file, {
                "config": result.model_config,
                "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                "history": result.history, "epoch_steps": result.epoch_steps,
                "resumed_at_step": result.resumed_at_step})
    finally:
        shutdown_distributed()


def launch(folder: Path, processes: int, nodes: TorchrunNodes = ONE_NODE) -> dict[str, Any]:
    """Run the job in this process (one process, one node) or under torchrun on `processes`
    processes of each node; return `final.pt`, which every node reads from the shared folder."""
    job = TrainingJob(folder)
    if runs_in_process(processes, nodes):
        run_job(folder)
    else:
        launch_job(__name__, folder, processes, nodes, "PACL training")
    return load_torch(job.result_file)


if __name__ == "__main__":
    worker_main(sys.argv[1:], __spec__.name, run_job)
