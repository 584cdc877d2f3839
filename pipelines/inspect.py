"""Text views of runs and stage artifacts for `affectflow runs` and `affectflow inspect`.

Everything shown comes from files that hold untrusted text (posts, file names, error messages),
so every value goes through `printable` before it reaches the terminal. Stage states are derived
(pipelines/state.py), never read back from run.json.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affectflow.core.display import printable
from affectflow.core.errors import UserError
from affectflow.core.locks import live_writer
from affectflow.core.runs import RunStore, list_runs
from affectflow.core.store import StageArtifact
from affectflow.pipelines.state import StageState, stage_states, unknown_states


def _shorten(value: Any, width: int = 60) -> Any:
    if isinstance(value, str):
        return printable(value, width) if value else value
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{len(value)} values]"
    return value


def state_line(state: StageState) -> str:
    """`  stage  state  in = out + rejected  seconds  reason`, one terminal-safe line."""
    counts = (f"{state.rows[0]} in = {state.rows[1]} out + {state.rows[2]} rejected"
              if state.rows else "-")
    seconds = f"{state.seconds:.1f}s" if isinstance(state.seconds, (int, float)) else "-"
    reason = f"  {printable(state.reason, 300)}" if state.reason else ""
    return f"  {state.stage:<13} {state.state:<11} {counts:<32} {seconds:>7}{reason}"


def shown_states(store: RunStore) -> tuple[list[StageState], str | None]:
    """The run's derived stage states; where its saved config cannot be checked on this machine,
    its stages as `unknown` and why."""
    try:
        with store.base_folder():
            return stage_states(store), None
    except UserError as error:
        return unknown_states(store), error.message


def _summary(store: RunStore) -> str:
    """`7 done, 2 stale, 1 failed` for one run (and why, where states are unknown)."""
    states, problem = shown_states(store)
    counts = Counter(state.state for state in states)
    order = ("running", "interrupted", "failed", "stale", "unknown", "not run", "done")
    summary = ", ".join(f"{counts[name]} {name}" for name in order if counts[name])
    return summary + (f" ({printable(problem, 160)})" if problem else "")


def runs_table(artifact_root: Path) -> str:
    """All runs under the root, newest first, one line each."""
    records = list_runs(artifact_root)
    if not records:
        return f"no runs under {artifact_root / 'runs'}"
    lines = []
    for record in records:
        run_id = str(record["run_id"])
        if "error" in record:
            lines.append(f"{printable(run_id)}  {printable(record['error'])}")
            continue
        store = RunStore(artifact_root, run_id)
        writer = live_writer(store.path)
        lines.append(f"{printable(run_id):<28} created {record.get('created', '?')}  "
                     f"{_summary(store)}" + (f"  [written by pid {writer.pid}]" if writer else ""))
    return "\n".join(lines)


def _size(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def cache_table(cache_root: Path) -> str:
    """The pixel cache's transforms with their images, size and last use, and the total."""
    from affectflow.core.pixel_cache import list_cache  # torch: the other views stay free of it

    entries = list_cache(cache_root)
    if not entries:
        return f"pixel cache {cache_root}: empty"
    lines = [f"pixel cache {cache_root}",
             f"  {'key':<24}  {'images':>8}  {'shards':>6}  {'size':>9}  {'last used':<19}  transform"]
    for entry in entries:
        used = (dt.datetime.fromtimestamp(entry.last_used).strftime("%Y-%m-%d %H:%M:%S")
                if entry.last_used is not None else "-")
        lines.append(f"  {entry.key:<24}  {entry.images:>8}  {entry.shards:>6}  "
                     f"{_size(entry.size):>9}  {used:<19}  {printable(entry.describe)}")
    total = sum(entry.size for entry in entries)
    lines.append(f"  total {_size(total)} in {sum(entry.images for entry in entries)} images; "
                 "bounded by run.pixel_cache_gb while stages write, "
                 "`affectflow cache prune --max-gb N` to shrink it")
    return "\n".join(lines)


def run_report(store: RunStore) -> str:
    """One run: where it is, its config history, and its stages in DAG order with their state."""
    record = store.read()
    lines = [f"run {printable(record['run_id'])} at {store.path}",
             f"created {record.get('created')}, code {printable(record.get('code_version', {}))}"]
    history = record.get("history", [])
    if len(history) > 1:
        lines.append(f"config changed {len(history) - 1} time(s), last {history[-1]['when']} by "
                     f"{printable(history[-1].get('command', '?'), 120)}")
    states, problem = shown_states(store)
    if problem:
        lines.append(f"states unknown: {printable(problem, 600)}")
    lines.append(f"  {'stage':<13} {'state':<11} {'rows':<32} {'time':>7}  reason")
    lines += [state_line(state) for state in states]
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _partition_headline(summary: dict[str, Any]) -> str:
    shares = summary.get("partitions", {})
    return "shares " + ", ".join(f"{name} {_pct(facts.get('share'))}" for name, facts in shares.items())


def _probe_headline(summary: dict[str, Any]) -> str:
    """The first metric of each (task, evaluation, level) row of the before/after table."""
    parts: dict[str, str] = {}
    for row in summary.get("table", []):
        where = "/".join(str(part) for part in (row["task"], row["evaluation"], row.get("level")) if part)
        parts.setdefault(where, f"{where} {row['metric']} {row['before']:.3f} -> {row['after']:.3f} "
                                f"(Δ {row['delta']:+.3f})")
    return "; ".join(parts.values())


def _cternet_eval_headline(summary: dict[str, Any]) -> str:
    binary = summary.get("binary_accuracy")
    return (f"test accuracy {_pct(summary.get('accuracy'))}, weighted F1 {_pct(summary.get('weighted_f1'))}"
            + (f", binary accuracy {_pct(binary)}" if binary is not None else ""))


def _cternet_train_headline(summary: dict[str, Any]) -> str:
    return (f"best val accuracy {_pct(summary.get('best_val_accuracy'))} at epoch "
            f"{summary.get('best_epoch', '-')} of {summary.get('epochs', '-')}")


def _pacl_headline(summary: dict[str, Any]) -> str:
    first, last = summary.get("loss_first"), summary.get("loss_last")
    losses = f"loss {first:.3f} -> {last:.3f}" if isinstance(first, float) and isinstance(last, float) else ""
    return f"{summary.get('steps', '-')} steps, {losses}"


def _cluster_headline(summary: dict[str, Any]) -> str:
    parts = []
    for side in ("factual", "emotional"):
        by_k = summary.get(side, {}).get("by_k", {})
        aris = [f"k={k} ARI {facts['ari']:.2f}" for k, facts in by_k.items() if facts.get("ari") is not None]
        if aris:
            parts.append(f"{side}: " + ", ".join(aris))
    return "; ".join(parts)


HEADLINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "partition": _partition_headline, "probe": _probe_headline, "pacl": _pacl_headline,
    "cluster": _cluster_headline, "cternet_eval": _cternet_eval_headline,
    "cternet_train": _cternet_train_headline,
}
"""The key result of a stage for the run-end summary, from its manifest's summary."""


def stage_headline(store: RunStore, stage: str) -> str:
    """One line with the stage's key result ('' for stages whose result is their rows)."""
    make = HEADLINES.get(stage)
    artifact = store.stage(stage)
    if make is None or not artifact.complete:
        return ""
    try:
        return printable(make(artifact.manifest.get("summary") or {}), 400)
    except (KeyError, TypeError, ValueError, AttributeError):
        return ""  # a summary of another version's shape: the accounting line stands alone


def readable(value: Any, indent: int = 2, width: int = 100) -> list[str]:
    """A manifest summary as indented `key: value` lines: long number lists are shortened,
    lists of records become one line each, text goes through `printable`."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item and not _flat_list(item):
                lines.append(f"{pad}{printable(key, 60)}:")
                lines += readable(item, indent + 2, width)
            else:
                lines.append(f"{pad}{printable(key, 60)}: {_scalar(item, width)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and all(not isinstance(v, (dict, list)) for v in item.values()):
                lines.append(pad + "- " + ", ".join(f"{printable(k, 40)} {_scalar(v, 60)}"
                                                    for k, v in item.items()))
            elif isinstance(item, (dict, list)):
                lines.append(f"{pad}-")
                lines += readable(item, indent + 2, width)
            else:
                lines.append(f"{pad}- {_scalar(item, width)}")
    else:
        lines.append(pad + _scalar(value, width))
    return lines


def _flat_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(item, (dict, list)) for item in value)


def _scalar(value: Any, width: int) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_scalar(item, 30) for item in value[:8])
        return f"[{shown}{f', … ({len(value)} values)' if len(value) > 8 else ''}]"
    if value is None:
        return "-"
    return printable(value, width)


def markdown_report(artifact: StageArtifact) -> str:
    """The markdown report a stage lists in its summary (probe's before/after table, CTERNet's
    metrics), as printable lines; '' for stages without one. Read by name from the manifest, so
    `inspect` imports no stage code."""
    summary = artifact.manifest.get("summary") or {}
    listed = [summary.get("report"), *summary.get("files", [])]
    name = next((item for item in listed if isinstance(item, str) and item.endswith(".md")), None)
    if name is None or not (artifact.path / name).is_file():
        return ""
    artifact.check_intact()
    text = (artifact.path / name).read_text(encoding="utf-8")
    return "\n".join(printable(line, 400) for line in text.splitlines())


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
        lines.append("summary:")
        lines += readable(manifest["summary"])
    if samples > 0 and manifest["rows_out"]:
        import pandas as pd  # only for sample rows: `runs` and summaries stay free of it

        frame = artifact.read_shard(manifest["shard_ids"][0]).to_pandas().head(samples)
        frame = frame.map(_shorten)
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.max_colwidth", 60):
            lines.append(f"first {len(frame)} rows:")
            lines.append(frame.to_string(index=False))
    return "\n".join(lines)
