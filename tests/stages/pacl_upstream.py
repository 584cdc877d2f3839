"""The PACL stage's upstream chain for tests: ingest, factual, emotional, teacher, partition and cluster
through the real config + runner path, plus `probe_ingest` of a labelled folder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from affectflow.core.runner import StageJob, run_stage
from affectflow.demo.generate import write_image_folder
from affectflow.pipelines.config import RunSettings
from affectflow.pipelines.execution import RunRef
from affectflow.stages.ingest.stage import IngestParams
from affectflow.stages.probe.ingest import ProbeIngestStage
from tests.stages.helpers import demo_config, run_stages

UPSTREAM = ["ingest", "factual", "emotional", "teacher", "partition", "cluster"]
# The tests' PACL encoder (timm's tiny test ResNet, random init) is also the one clustered,
# as in the paper: factual clusters come from the encoder PACL enhances.
CLUSTER = {"visual_encoder": "timm:test_resnet", "pretrained": False, "ks": [2, 3]}


def settings(ref: RunRef) -> RunSettings:
    return RunSettings(artifact_root=Path(ref.artifact_root), workers=2)


def write_labelled_folder(root: Path, per_class: int = 10, size: int = 64) -> Path:
    """An FI-style folder drawn by the demo generator, with enough images per class for a
    train/val/test split (the session demo data set keeps its labelled folder minimal)."""
    write_image_folder(root, per_class, random.Random(5), size)
    return root


def run_upstream(demo_dir: Path, root: Path, run_id: str = "pacl",
                 labelled: Path | None = None, teacher: dict[str, Any] | None = None) -> RunRef:
    """The chain up to `cluster` on the demo posts (teacher settings overridden by `teacher`),
    and probe_ingest of `labelled` when given."""
    raw = demo_config(demo_dir, root, partition={}, cluster=CLUSTER, teacher=teacher or {})
    ref = run_stages(raw, UPSTREAM, run_id=run_id)
    if labelled is not None:
        params = IngestParams(source="image_folder", path=labelled, dataset_name="demo-fi",
                              shard_size=64)
        run_stage(StageJob(ref.store, ProbeIngestStage(), params, settings(ref)))
    return ref
