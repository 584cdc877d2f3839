"""One listed row -> a sample row or a reject row: the per-row work of `ingest`.

It is a plain function of picklable values so it can run in a worker process (`decode_pool`):
image decoding is most of ingest's time, and processes decode in parallel without sharing a GIL.
Text files (TumEmo) are read here too, so the serial listing pass reads only the label file.
A worker process keeps the folder it was forked in, so relative paths are resolved against the
caller's folder (`RowRules.base_dir`), never the worker's own. Files are read through
`core/files.py`: regular files inside the dataset roots only, up to a byte limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.files import FileProblem, read_dataset_file
from affectflow.core.hashing import stable_sample_id
from affectflow.stages.ingest.image_check import ImageProblem, check_image
from affectflow.stages.ingest.sources import only_control_characters, read_text_file
from affectflow.stages.ingest.text_clean import clean_post_text


@dataclass(frozen=True)
class RowRules:
    """What `validate_row` needs from the stage's params and label list."""

    dataset: str
    needs_text: bool
    text_encodings: tuple[str, ...]
    hashtags: str
    expand_contractions: bool
    min_image_side: int
    max_image_pixels: int
    label_ids: dict[str, int]
    base_dir: str  # the caller's working folder: what relative dataset paths are relative to
    roots: tuple[str, ...]  # resolved dataset roots every image and text file must lie inside
    max_image_bytes: int
    max_text_bytes: int


Validated = tuple[dict[str, Any] | None, dict[str, Any] | None]


def validate_row(row: dict[str, Any], rules: RowRules) -> Validated:
    """(sample row, None) or (None, reject row with its reason): exactly one of the two."""
    sample_id = stable_sample_id(rules.dataset, row["source_id"])
    reject = {"sample_id": sample_id, "source_id": row["source_id"]}
    if row["problem"]:
        return None, {**reject, "reason": row["problem"], "detail": row["detail"]}
    text = row["text"]
    if row["text_file"]:
        text, problem, detail = read_text_file(Path(rules.base_dir, row["text_file"]),
                                               rules.text_encodings, rules.max_text_bytes,
                                               rules.roots)
        if problem:
            return None, {**reject, "reason": problem, "detail": detail}
    raw = text or ""
    if len(raw.encode("utf-8", "surrogatepass")) > rules.max_text_bytes:
        return None, {**reject, "reason": "text_too_large",
                      "detail": f"text of more than max_text_bytes={rules.max_text_bytes}"}
    if only_control_characters(raw) and raw.strip():
        return None, {**reject, "reason": "control_text",
                      "detail": "the text holds only control or format characters"}
    cleaned = clean_post_text(raw, rules.hashtags, rules.expand_contractions)
    if rules.needs_text and not cleaned:
        detail = "text is empty" if not raw.strip() else f"nothing left after cleaning {raw[:60]!r}"
        return None, {**reject, "reason": "empty_text", "detail": detail}
    try:
        data = read_dataset_file(Path(rules.base_dir, row["image_path"]), "image",
                                 rules.max_image_bytes, rules.roots)
    except FileProblem as problem:
        return None, {**reject, "reason": problem.reason, "detail": problem.detail}
    facts = check_image(data, rules.min_image_side, rules.max_image_pixels)
    if isinstance(facts, ImageProblem):
        return None, {**reject, "reason": facts.reason, "detail": facts.detail}
    return {
        "sample_id": sample_id, "source_id": row["source_id"], "dataset": rules.dataset,
        "image_path": row["image_path"], "text_raw": raw, "text": cleaned,
        "label": row["label"], "label_id": rules.label_ids.get(row["label"]),
        "label_set": row["label_set"], "targets": row["targets"], "split": row["split"],
        "width": facts.width, "height": facts.height,
        "image_format": facts.format, "image_sha256": facts.sha256,
    }, None


def validate_rows(rows: list[dict[str, Any]], rules: RowRules) -> list[Validated]:
    """A batch of rows, so one process task carries many rows and the rules once."""
    return [validate_row(row, rules) for row in rows]
