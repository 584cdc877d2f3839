"""Run bookkeeping: one folder per run with `run.json` (config snapshot, code version, stages).

Several stages of one run may finish at the same time (the scoring stages run concurrently), so
every update of `run.json` is a locked read-modify-write followed by an atomic replace.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import re
import secrets
import socket
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.atomic import write_json, write_text
from affectflow.core.errors import UserError
from affectflow.core.locks import command_line, run_writer
from affectflow.core.store import StageArtifact

RUN_FILE = "run.json"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ERRORS_DIR = "errors"
"""Under a run folder: the full text of each stage's last error (`<stage>.txt`)."""
WORK_DIR = ".work"
"""Under a run folder: stages being built, moved into place when finished (core/runner.py)."""


def new_run_id(prefix: str = "run") -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def iso_utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def validate_run_id(run_id: str) -> str:
    """The id itself, when the whole of it is letters, digits, '.', '_' or '-' (no separators, no
    newline, nothing that could name a folder outside `runs/`)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise UserError(f"invalid run id {run_id!r}",
                        hint="use letters, digits, '.', '_' or '-', starting with a letter or "
                             "digit (at most 100 characters)")
    return run_id


@dataclass(frozen=True)
class RunStore:
    """A run folder: `<artifact_root>/runs/<run_id>/`, which must lie inside the artifact root
    (a valid id, and no symlink that leads elsewhere)."""

    artifact_root: Path
    run_id: str

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        runs = (self.artifact_root / "runs").resolve()
        if self.path.exists() and runs not in self.path.resolve().parents:
            raise UserError(f"run folder {self.path} leads outside {runs}",
                            hint="run folders must be plain folders under <artifact_root>/runs/")

    @property
    def path(self) -> Path:
        return self.artifact_root / "runs" / self.run_id

    @contextmanager
    def writer(self, command: str | None = None) -> Iterator[None]:
        """Hold this run's writer lock (core/locks.py): every command that writes the run does."""
        with run_writer(self.path, self.run_id, command):
            yield

    def building(self, stage: str) -> StageArtifact:
        """Where a stage's next output is built (`.work/<stage>`), see core/runner.py."""
        return StageArtifact(self.path / WORK_DIR / stage)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def exists(self) -> bool:
        return self.run_file.is_file()

    def stage(self, name: str) -> StageArtifact:
        return StageArtifact(self.path / name)

    def read(self) -> dict[str, Any]:
        if not self.run_file.is_file():
            raise UserError(f"no run '{self.run_id}' under {self.artifact_root / 'runs'}",
                            hint="list runs with: affectflow runs")
        return json.loads(self.run_file.read_text())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".run.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create(self, config: dict[str, Any], code_version: dict[str, str]) -> None:
        """Write a fresh run.json, or refresh the config of an existing run (keeping stages).

        A new run records the folder it was made in (`base_dir`): the config's relative paths
        (datasets, models) mean that folder, whichever folder later commands run in."""
        with self._locked():
            record = json.loads(self.run_file.read_text()) if self.run_file.is_file() else {
                "run_id": self.run_id, "created": utc_now(), "stages": {},
                "base_dir": os.getcwd(), "history": [history_entry({})]}
            record["config"] = config
            record["code_version"] = code_version
            record["updated"] = utc_now()
            write_json(self.run_file, record)

    def update_config(self, config: dict[str, Any], code_version: dict[str, str] | None = None
                      ) -> dict[str, list[Any]]:
        """Save a changed config as the run's own, with a history entry of what changed (who,
        when, which command); returns the changes (`key -> [old, new]`)."""
        with self._locked():
            record = self.read()
            changes = config_changes(record.get("config", {}), config)
            if changes:
                record["config"] = config
                record.setdefault("history", []).append(history_entry(changes))
            if code_version is not None:
                record["code_version"] = code_version
            record["updated"] = utc_now()
            write_json(self.run_file, record)
            return changes

    @contextmanager
    def base_folder(self) -> Iterator[None]:
        """Work in the folder the run was made in (its relative paths mean that folder), when it
        still exists; a run moved to another machine keeps the current folder."""
        base = self.read().get("base_dir")
        if base and Path(base).is_dir() and Path(base) != Path.cwd():
            with contextlib.chdir(base):
                yield
        else:
            yield

    def record_failure(self, stage: str, error: BaseException) -> None:
        """The stage's attempt failed: its error's first line in run.json, the full text (with
        the traceback) in `errors/<stage>.txt`."""
        error_file = self.path / ERRORS_DIR / f"{stage}.txt"
        text = "".join(traceback.format_exception(error))
        write_text(error_file, text)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        self.update_stage(stage, status="failed", error=f"{type(error).__name__}: {first}"[:500],
                          error_file=error_file.relative_to(self.path).as_posix(),
                          finished=utc_now())

    def update_stage(self, stage: str, **fields: Any) -> None:
        with self._locked():
            record = self.read()
            record.setdefault("stages", {}).setdefault(stage, {}).update(fields)
            record["updated"] = utc_now()
            write_json(self.run_file, record)


IGNORED_IN_CHANGES = ("run.artifact_root",)
"""Where a run lives is given by the command (`--artifact-root`), not by its config."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """`dotted.key -> [old, new]` for every setting that differs (None: not set)."""
    old, new = _flat(before), _flat(after)
    return {key: [old.get(key), new.get(key)] for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and key not in IGNORED_IN_CHANGES}


def history_entry(changes: dict[str, list[Any]]) -> dict[str, Any]:
    """Who changed a run's config, when, with which command, and what changed."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return {"when": utc_now(), "who": f"{user}@{socket.gethostname()}", "command": command_line(),
            "changes": changes}


def list_runs(artifact_root: Path) -> list[dict[str, Any]]:
    """All run records under the root, newest first; unreadable ones are reported, not hidden."""
    runs_dir = artifact_root / "runs"
    records = []
    for run_file in sorted(runs_dir.glob(f"*/{RUN_FILE}")):
        try:
            records.append(json.loads(run_file.read_text()))
        except json.JSONDecodeError as error:
            records.append({"run_id": run_file.parent.name, "error": f"unreadable run.json: {error}"})
    return sorted(records, key=lambda record: record.get("created", ""), reverse=True)
