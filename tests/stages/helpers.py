"""Running stage chains in tests through the real config + runner path (no Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affectflow.core.atomic import write_json
from affectflow.core.integrity import records_digest
from affectflow.core.runner import run_stage
from affectflow.core.store import MANIFEST, StageArtifact, stage_file_records
from affectflow.pipelines.config import load_config
from affectflow.pipelines.execution import RunRef, make_job, open_run

# The pretrain chain up to the pseudo-labels: what most stage tests need sections for.
SCORING_CHAIN = ("ingest", "caption", "triplets", "factual", "emotional", "teacher", "partition",
                 "cluster")


def demo_config(demo_dir: Path, artifact_root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The demo config pointed at a test demo folder, with per-section overrides."""
    raw: dict[str, Any] = {
        "run": {"artifact_root": str(artifact_root), "workers": 2, "stages": list(SCORING_CHAIN)},
        "ingest": {"source": "tumemo", "path": str(demo_dir / "tumemo"), "shard_size": 16,
                   "dataset_name": "demo"},
        "caption": {"kind": "blip", "model": str(demo_dir / "models" / "captioner")},
        "factual": {"clip": str(demo_dir / "models" / "clip"), "batch_size": 16},
        "emotional": {"clip": str(demo_dir / "models" / "clip"),
                      "anp_vocabulary": str(demo_dir / "anps.txt"),
                      "text_encoder": "packaged:all-MiniLM-L6-v2", "batch_size": 16},
        "teacher": {"text_encoder": "packaged:all-MiniLM-L6-v2", "pooling": "mean", "batch_size": 16},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def run_stages(raw: dict[str, Any], stages: list[str], run_id: str = "test",
               force: bool = False) -> RunRef:
    config = load_config(None, raw=raw)
    ref = open_run(config, run_id)
    for name in stages:
        run_stage(make_job(ref, config, name), force=force)
    return ref


def record_edit(artifact: StageArtifact) -> None:
    """After a test edits a finished stage's files on purpose (to plant upstream data a stage
    must cope with), record them in its manifest as if the stage had written them; readers
    refuse files that differ from their records."""
    manifest = artifact.manifest
    manifest["files"] = stage_file_records(artifact.path)
    manifest["digest"] = records_digest(manifest["files"])
    write_json(artifact.path / MANIFEST, manifest)
