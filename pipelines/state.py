"""The state of each stage of a run, derived from what is on disk — never remembered.

A stage is `done` when its finished output is intact and matches what the run's saved config
would compute now (same params, inputs, code, library versions and external data), `stale` when
it does not (the reason names the param, input, code module, library or data that changed), and
`not run` when it has no output. The last attempt's record in run.json only adds what cannot be
derived: an attempt that ended in an error is `failed` (its first line, and where the full text
is), and an attempt that never recorded an end is `running` while the run's writer lock is held
and `interrupted` once its writer is gone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.errors import UserError
from affectflow.core.integrity import damaged_files
from affectflow.core.locks import live_writer, read_holder
from affectflow.core.runs import RunStore, config_changes
from affectflow.pipelines.config import load_config, stage_params
from affectflow.pipelines.execution import RunRef, make_job

DONE, STALE, FAILED, INTERRUPTED, RUNNING, NOT_RUN, UNKNOWN = (
    "done", "stale", "failed", "interrupted", "running", "not run", "unknown")
TO_RESUME = (STALE, FAILED, INTERRUPTED, NOT_RUN)
"""States `affectflow resume` computes again."""


@dataclass(frozen=True)
class StageState:
    """One stage's derived state, why, and its counts and time when it has an output."""

    stage: str
    state: str
    reason: str = ""
    rows: tuple[int, int, int] | None = None
    seconds: float | None = None


def _code_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    changes = []
    old, new = recorded.get("modules", {}), current["modules"]
    for module in sorted(set(old) | set(new)):
        if module not in old:
            changes.append(f"code: {module} now imported")
        elif module not in new:
            changes.append(f"code: {module} no longer imported")
        elif old[module] != new[module]:
            changes.append(f"code: {module} changed")
    old, new = recorded.get("libraries", {}), current["libraries"]
    changes += [f"library {name}: {old.get(name, '-')} -> {new.get(name, '-')}"
                for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    return changes


def _staleness(ref: RunRef, config: Any, name: str, manifest: dict[str, Any],
               states: dict[str, StageState]) -> list[str]:
    """Why a finished stage's output is not what the saved config computes now (empty: it is)."""
    job = make_job(ref, config, name)
    params = stage_params(config, name)
    reasons = [f"input {dep} is {states[dep].state}" for dep in job.stage.input_names(params)
               if dep in states and states[dep].state != DONE]
    if reasons:
        return reasons
    changes = config_changes({name: manifest.get("params", {})},
                             {name: params.model_dump(mode="json")})
    reasons += [f"param {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]
    for dep, artifact in job.input_artifacts().items():
        if (manifest.get("inputs", {}).get(dep) != artifact.fingerprint
                or manifest.get("input_digests", {}).get(dep, artifact.digest) != artifact.digest):
            reasons.append(f"input {dep} was computed again since")
    reasons += _code_changes(manifest.get("code", {}), job.stage.code())
    if manifest.get("schema_version") != job.stage.schema_version:
        reasons.append(f"schema version {manifest.get('schema_version')} -> "
                       f"{job.stage.schema_version}")
    fingerprint, source = job.fingerprint()
    if source != manifest.get("source_fingerprint"):
        reasons.append("external data changed (dataset or local model files)")
    if not reasons and fingerprint != manifest["fingerprint"]:
        reasons.append("fingerprint changed")
    damaged = damaged_files(ref.store.stage(name).path, ref.store.stage(name).records() or {})
    reasons += [f"damaged: {relative} ({problem})" for relative, problem in damaged.items()]
    return reasons


def _attempt(name: str, record: dict[str, Any], writer: Any, gone: Any) -> StageState | None:
    """What the last attempt's record adds: running, interrupted or failed (None otherwise)."""
    status = record.get("status")
    if status == "running":
        if writer is not None:
            return StageState(name, RUNNING, f"pid {writer.pid} on {writer.host} since "
                                             f"{record.get('started', '?')}")
        who = f"; its writer (pid {gone.pid}) is gone" if gone is not None else ""
        return StageState(name, INTERRUPTED, f"started {record.get('started', '?')}{who}")
    if status == "failed":
        where = f" (full text: {record['error_file']})" if record.get("error_file") else ""
        first = str(record.get("error", "")).strip().splitlines()[:1] or ["unknown error"]
        return StageState(name, FAILED, f"{first[0]}{where}; at {record.get('finished', '?')}")
    return None


def _saved_config(store: RunStore, record: dict[str, Any]) -> Any:
    """The run's saved config, validated here (its dataset and model paths must be found)."""
    try:
        return load_config(None, raw=record["config"])
    except UserError as error:
        base = record.get("base_dir")
        where = "" if not base else (f" (its relative paths mean {base}, the folder it was made in"
                                     + ("" if Path(base).is_dir() else ", which is not on this machine")
                                     + ")")
        raise UserError(f"run {store.run_id}: its saved config does not validate here{where}: "
                        f"{error.message}",
                        hint=f"put the data where the config says, or record a new path: affectflow "
                             f"run --config F --run-id {store.run_id} --update") from None


def unknown_states(store: RunStore) -> list[StageState]:
    """For views of a run whose saved config cannot be checked here (a dataset that is not on
    this machine): each stage with its recorded counts, `unknown` where it has an output."""
    record = store.read()
    names = record.get("config", {}).get("run", {}).get("stages") or list(record.get("stages", {}))
    states = []
    for name in names:
        artifact = store.stage(name)
        manifest = artifact.manifest if artifact.complete else {}
        rows = ((manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"])
                if manifest else None)
        states.append(StageState(name, UNKNOWN if manifest else NOT_RUN, "", rows,
                                 manifest.get("timings", {}).get("seconds")))
    return states


def stage_states(store: RunStore) -> list[StageState]:
    """Every stage of the run's saved `run.stages`, in that (DAG) order; a saved config that does
    not validate here is an error (nothing can be compared against it)."""
    record = store.read()
    config = _saved_config(store, record)
    ref = RunRef(str(store.artifact_root), store.run_id)
    writer = live_writer(store.path)
    gone = None if writer is not None else read_holder(store.path)
    if writer is not None and writer.pid == os.getpid() and writer.host == socket.gethostname():
        # This process holds the lock, and computes no stage while it derives states (`resume`
        # asks before it starts one, `stage` after it ends): a running attempt is an earlier
        # writer's, which is gone.
        writer = None
    states: dict[str, StageState] = {}
    for name in config.run.stages:
        artifact = store.stage(name)
        attempt = _attempt(name, record.get("stages", {}).get(name, {}), writer, gone)
        if not artifact.complete:
            states[name] = attempt or StageState(name, NOT_RUN)
            continue
        manifest = artifact.manifest
        rows = (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"])
        seconds = manifest.get("timings", {}).get("seconds")
        reasons = _staleness(ref, config, name, manifest, states)
        if attempt is not None and (reasons or attempt.state != FAILED):
            states[name] = StageState(name, attempt.state, attempt.reason, rows, seconds)
        elif reasons:
            states[name] = StageState(name, STALE, "; ".join(reasons), rows, seconds)
        else:
            states[name] = StageState(name, DONE, "", rows, seconds)
    return list(states.values())
