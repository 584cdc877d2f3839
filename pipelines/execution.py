"""Binding configs to runs and stages, with no Prefect involved (usable from tests/notebooks)."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import affectflow
from affectflow.core.errors import UserError
from affectflow.core.runner import StageJob, up_to_date
from affectflow.core.runs import RunStore, config_changes, new_run_id, validate_run_id
from affectflow.pipelines.config import config_snapshot, load_config, stage_params
from affectflow.stages.registry import get_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRef:
    """What Prefect tasks pass around: where a run lives, never its data."""

    artifact_root: str
    run_id: str

    @property
    def store(self) -> RunStore:
        return RunStore(Path(self.artifact_root), self.run_id)


def code_version() -> dict[str, str]:
    """Package version plus the git commit when run from a checkout."""
    version = {"affectflow": affectflow.__version__}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(affectflow.__file__).parent, timeout=5)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def run_ref(config: BaseModel, run_id: str | None) -> RunRef:
    """Where the run of this config lives (a new id when none is given)."""
    return RunRef(str(config.run.artifact_root), validate_run_id(run_id) if run_id else new_run_id())


def check_config_change(ref: RunRef, config: BaseModel, update: bool) -> dict[str, list[Any]]:
    """The changes `config` makes to an existing run's saved config (empty for a new run); a
    change without `update` is refused, since the saved config is the run's source of truth."""
    if not ref.store.exists():
        return {}
    changes = config_changes(ref.store.read()["config"], config_snapshot(config))
    if changes and not update:
        lines = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise UserError(f"run {ref.run_id} exists with another config ({lines})",
                        hint=f"to record these changes in the run, add --update; to continue it "
                             f"as saved: affectflow resume {ref.run_id}")
    return changes


def open_run(config: BaseModel, run_id: str | None, update: bool = False) -> RunRef:
    """Create the run folder with the resolved config in run.json, or reopen an existing run
    (its saved config changes only with `update`, recorded in its history)."""
    ref = run_ref(config, run_id)
    if ref.store.exists():
        check_config_change(ref, config, update)
        ref.store.update_config(config_snapshot(config), code_version())
    else:
        ref.store.create(config_snapshot(config), code_version())
    return ref


def run_config(ref: RunRef, overrides: list[str] | None = None) -> BaseModel:
    """The run's saved config, re-validated, with optional overrides applied."""
    return load_config(None, overrides, raw=ref.store.read()["config"],
                       source=f"the saved config of run {ref.run_id} ({ref.store.run_file})")


def make_job(ref: RunRef, config: BaseModel, stage_name: str) -> StageJob:
    return StageJob(run=ref.store, stage=get_stage(stage_name),
                    params=stage_params(config, stage_name), settings=config.run)


def skip_if_up_to_date(ref: RunRef, config: BaseModel, update: bool = False) -> dict[str, Any] | None:
    """When every configured stage of an existing run is up to date: refresh the run's config,
    record the stages as skipped and return what the flow would (None when there is work)."""
    if not ref.store.exists():
        return None
    stages = list(config.run.stages)
    if not all(up_to_date(make_job(ref, config, name)) for name in stages):
        return None
    open_run(config, ref.run_id, update)
    for name in stages:
        ref.store.update_stage(name, status="skipped", fingerprint=ref.store.stage(name).fingerprint)
    logger.info("every stage of run %s is up to date: nothing to run", ref.run_id)
    return {"run_id": ref.run_id, "run_dir": str(ref.store.path),
            "stages": {name: stage_summary(ref, name) for name in stages}}


def stage_summary(ref: RunRef, stage_name: str) -> dict[str, Any]:
    """Counts and timings of a finished stage, whether this call computed or skipped it, and the
    result lines its summary offers for the console (`headline`: e.g. an accuracy or AUC)."""
    manifest = ref.store.stage(stage_name).manifest
    status = ref.store.read().get("stages", {}).get(stage_name, {}).get("status", "done")
    return {"status": status, "headline": manifest["summary"].get("headline", []),
            **{key: manifest[key] for key in ("stage", "fingerprint", "rows_in", "rows_out",
                                              "rows_rejected", "rejects_by_reason", "timings")}}
