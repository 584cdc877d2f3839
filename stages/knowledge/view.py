"""`affectflow inspect RUN caption|triplets|knowledge`: post text, caption, triplets and the
knowledge-based label side by side.

Samples are the first rows of the inspected stage in shard order; the other stages' values are
joined by sample_id from the same shard number (shard i of every stage derives from shard i of
ingest). Posts and captions are untrusted, so every value goes through `printable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from affectflow.core.display import printable
from affectflow.core.runs import RunStore
from affectflow.core.store import SAMPLE_ID, SOURCE_ID, StageArtifact
from affectflow.stages.ingest.stage import LABEL, TEXT
from affectflow.stages.knowledge.caption import CAPTION
from affectflow.stages.knowledge.knowledge import KNOWLEDGE_LABEL, KNOWLEDGE_LABEL_PROBABILITY
from affectflow.stages.knowledge.triplets import KNOWLEDGE_TEXT, TRIPLETS

KNOWLEDGE_STAGES = ("caption", "triplets", "knowledge")
DETAIL_COLUMNS = {"ingest": [SOURCE_ID, LABEL, TEXT], "caption": [CAPTION],
                  "triplets": [TRIPLETS, KNOWLEDGE_TEXT],
                  "knowledge": [KNOWLEDGE_LABEL, KNOWLEDGE_LABEL_PROBABILITY]}
LABEL_WIDTH = 10
VALUE_WIDTH = 400


@dataclass
class KnowledgeSample:
    """One sample with whatever the ingest, caption and triplets stages hold for it."""

    sample_id: str
    source_id: str | None = None
    label: str | None = None
    text: str | None = None
    caption: str | None = None
    triplets: list[dict[str, str]] | None = None
    knowledge_text: str | None = None
    knowledge_label: str | None = None
    knowledge_label_probability: float | None = None


def _rows_for(artifact: StageArtifact, shard_id: int, columns: list[str],
              ids: pa.Array) -> dict[str, dict[str, Any]]:
    """sample_id -> the wanted columns of one shard; {} when the stage or shard is missing."""
    path = artifact.shard_path(shard_id)
    if not artifact.complete or not path.is_file():
        return {}
    present = [name for name in columns if name in artifact.schema().names]
    table = artifact.read_shard(shard_id, columns=[SAMPLE_ID, *present])
    table = table.filter(pc.is_in(table[SAMPLE_ID], value_set=ids))
    return {row.pop(SAMPLE_ID): row for row in table.to_pylist()}


def knowledge_samples(run: RunStore, stage: str, limit: int) -> list[KnowledgeSample]:
    """The first `limit` rows of `stage`, joined with ingest, caption and triplets values."""
    artifact = run.stage(stage)
    samples: list[KnowledgeSample] = []
    for shard_id in artifact.manifest["shard_ids"]:
        if len(samples) >= limit:
            break
        ids = artifact.read_shard(shard_id, columns=[SAMPLE_ID])[SAMPLE_ID]
        ids = ids.slice(0, limit - len(samples)).combine_chunks()
        details: dict[str, dict[str, Any]] = {sample_id: {} for sample_id in ids.to_pylist()}
        for name, columns in DETAIL_COLUMNS.items():
            for sample_id, values in _rows_for(run.stage(name), shard_id, columns, ids).items():
                details[sample_id].update(values)
        samples += [KnowledgeSample(sample_id, **values) for sample_id, values in details.items()]
    return samples


def format_knowledge_label(label: str, probability: float | None) -> str:
    """'Sad (p 0.83)': the zero-shot label and its softmax probability."""
    return label if probability is None else f"{label} (p {probability:.2f})"


def format_triplets(triplets: list[dict[str, str]]) -> str:
    if not triplets:
        return "(none)"
    return "; ".join(f"({t['subject']} | {t['verb']} | {t['object']})" for t in triplets)


def sample_lines(index: int, sample: KnowledgeSample) -> list[str]:
    """One block per sample: id and origin, then one aligned line per value."""
    origin = ", ".join(f"{key} {printable(value, 40)}" for key, value in
                       (("source", sample.source_id), ("label", sample.label)) if value)
    lines = [f"[{index}] {sample.sample_id[:16]}" + (f"  {origin}" if origin else "")]
    values = [("text", sample.text), ("caption", sample.caption)]
    if sample.triplets is not None:
        values += [("triplets", format_triplets(sample.triplets)),
                   ("knowledge", sample.knowledge_text)]
    if sample.knowledge_label is not None:
        values.append(("k label", format_knowledge_label(sample.knowledge_label,
                                                         sample.knowledge_label_probability)))
    for name, value in values:
        shown = "(missing)" if value is None else printable(value, VALUE_WIDTH)
        lines.append(f"    {name + ':':<{LABEL_WIDTH}} {shown}")
    return lines


def _counts_line(stage: str, run: RunStore, manifest: dict[str, Any]) -> str:
    reasons = ", ".join(f"{reason}: {count}" for reason, count in
                        sorted(manifest["rejects_by_reason"].items()))
    return (f"{stage} of run {run.run_id}: {manifest['rows_in']} in = {manifest['rows_out']} out "
            f"+ {manifest['rows_rejected']} rejected" + (f" ({reasons})" if reasons else ""))


def _summary_lines(stage: str, summary: dict[str, Any]) -> list[str]:
    if stage == "caption" and summary.get("captions"):
        return [f"captioner {printable(summary['captioner'], 200)}",
                f"{summary['captions']} captions, {summary['mean_words']} words on average, "
                f"{summary['empty_captions']} empty, {summary['distinct_share']:.0%} distinct"]
    if stage == "triplets" and summary.get("captions"):
        verbs = ", ".join(f"{printable(verb, 30)} {count}"
                          for verb, count in summary["top_verbs"])
        return [f"parser {summary['parser']}",
                f"{summary['triplets']} triplets in {summary['captions']} captions "
                f"({summary['triplets_per_caption']:.2f} per caption), "
                f"{summary['share_without_triplets']:.0%} without any",
                f"top verbs: {verbs or '(none)'}"]
    if stage == "knowledge" and summary.get("samples"):
        counts = ", ".join(f"{printable(label, 30)} {count}"
                           for label, count in summary["label_counts"].items())
        return [f"k: {summary['representation']} {'x'.join(map(str, summary['knowledge_shape']))} "
                f"per sample from {printable(summary['clip'], 120)}; "
                f"{summary['share_without_triplets']:.1%} without triplets (caption in both halves)"
                + (f", {summary['truncated']} cut at the CLIP context" if summary["truncated"] else ""),
                f"zero-shot labels from prompts {summary['prompts']}: {counts}",
                *summary["headline"]]
    return []


def _reject_lines(artifact: StageArtifact, limit: int) -> list[str]:
    rejects = artifact.rejects().slice(0, limit).to_pylist()
    if not rejects:
        return []
    lines = ["rejected (first rows):"]
    lines += [f"  {row['sample_id'][:16]}  {row['reason']}: {printable(row['detail'] or '', 100)}"
              for row in rejects]
    return lines


def knowledge_report(run: RunStore, stage: str, samples: int = 5) -> str:
    """Counts, the stage summary, `samples` samples side by side, and the first rejects."""
    if stage not in KNOWLEDGE_STAGES:
        raise ValueError(f"stage must be one of {KNOWLEDGE_STAGES}, got {stage!r}")
    artifact = run.stage(stage)
    manifest = artifact.manifest
    lines = [_counts_line(stage, run, manifest), *_summary_lines(stage, manifest["summary"])]
    chosen = knowledge_samples(run, stage, samples) if samples > 0 else []
    if chosen:
        lines.append("")
        for index, sample in enumerate(chosen, start=1):
            lines += sample_lines(index, sample)
    rejected = _reject_lines(artifact, samples)
    if rejected:
        lines += ["", *rejected]
    return "\n".join(lines)
