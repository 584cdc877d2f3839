"""Text views of runs and stage artifacts for `affectflow runs` and `affectflow inspect`.

Everything shown comes from files that hold untrusted text (posts, file names, error messages),
so every value goes through `printable` before it reaches the terminal.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from affectflow.core.display import printable
from affectflow.core.locks import live_writer, read_holder
from affectflow.core.runs import RunStore, list_runs
from affectflow.core.store import StageArtifact


def _shorten(value: Any, width: int = 60) -> Any:
    if isinstance(value, str):
        return printable(value, width) if value else value
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{len(value)} values]"
    return value


def shown_status(run_path: Path, record: dict[str, Any], stage: dict[str, Any]) -> str:
    """A stage's recorded status, except that `running` without a live writer is `interrupted`
    (its writer was killed before it could record an end)."""
    status = str(stage.get("status", "?"))
    if status != "running":
        return status
    writer = live_writer(run_path)
    if writer is not None:
        return f"running (pid {writer.pid})"
    gone = read_holder(run_path)
    since = f"writer pid {gone.pid} gone, " if gone else ""
    return f"interrupted ({since}last update {record.get('updated', '?')})"


def runs_table(artifact_root: Path) -> str:
    records = list_runs(artifact_root)
    if not records:
        return f"no runs under {artifact_root / 'runs'}"
    lines = []
    for record in records:
        run_path = artifact_root / "runs" / str(record["run_id"])
        lines.append(f"{printable(record['run_id'])}  created {record.get('created', '?')}"
                     + (f"  ({printable(record['error'])})" if "error" in record else ""))
        for name, stage in record.get("stages", {}).items():
            counts = (f"{stage.get('rows_in', '-')} in / {stage.get('rows_out', '-')} out / "
                      f"{stage.get('rows_rejected', '-')} rejected")
            seconds = stage.get("seconds")
            lines.append(f"  {name:<12} {shown_status(run_path, record, stage):<8} {counts}"
                         + (f"  {seconds:.1f}s" if isinstance(seconds, (int, float)) else ""))
    return "\n".join(lines)


def run_overview(store: RunStore) -> str:
    record = store.read()
    lines = [f"run {record['run_id']} at {store.path}", f"created {record.get('created')}",
             f"code {record.get('code_version', {})}", "stages:"]
    for name, stage in record.get("stages", {}).items():
        lines.append(f"  {name:<12} {shown_status(store.path, record, stage):<8} rows out "
                     f"{stage.get('rows_out', '-')}, rejected {stage.get('rows_rejected', '-')}")
    return "\n".join(lines)


def stage_report(artifact: StageArtifact, samples: int) -> str:
    manifest = artifact.manifest
    artifact.check_intact()  # nothing damaged is shown as if it were whole
    lines = [f"stage {manifest['stage']} ({artifact.path})",
             f"fingerprint {manifest['fingerprint'][:16]}  code {manifest['code_version']}",
             f"rows: {manifest['rows_in']} in = {manifest['rows_out']} out + "
             f"{manifest['rows_rejected']} rejected, {len(manifest['shard_ids'])} shard(s), "
             f"{manifest['timings']['seconds']:.2f}s",
             "schema:"]
    lines += [f"  {name}: {dtype}" for name, dtype in manifest["schema"]]
    for table, columns in manifest.get("side_tables", {}).items():
        lines.append(f"side table '{table}': {artifact.num_rows(table)} rows, "
                     + ", ".join(f"{name}: {dtype}" for name, dtype in columns))
    if manifest["rejects_by_reason"]:
        lines.append("rejects by reason:")
        lines += [f"  {reason}: {count}" for reason, count in
                  sorted(manifest["rejects_by_reason"].items(), key=lambda item: -item[1])]
        if samples > 0:
            rejects = artifact.rejects().to_pandas().head(samples).map(_shorten)
            lines.append(textwrap.indent(rejects.to_string(index=False), "  "))
    if manifest.get("summary"):
        lines.append(f"summary: {printable(manifest['summary'], 2000)}")
    if samples > 0 and manifest["rows_out"]:
        frame = artifact.read_shard(manifest["shard_ids"][0]).to_pandas().head(samples)
        frame = frame.map(_shorten)
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.max_colwidth", 60):
            lines.append(f"first {len(frame)} rows:")
            lines.append(frame.to_string(index=False))
    return "\n".join(lines)
