"""`ingest`: list a dataset, validate every image and text once, write the clean sample table.

Output rows are keyed by a stable 128-bit `sample_id` (dataset name + source id). Every listed
row ends up either in the output or in `rejects.parquet` with a reason.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.files import real_roots
from affectflow.core.hashing import files_fingerprint, hash_value, tree_fingerprint
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.stages.ingest.annotations import LabelLevel, check_hierarchy, hierarchy_classes
from affectflow.stages.ingest.decode_pool import decode_pool, discard_pool
from affectflow.stages.ingest.sources import (
    MANIFEST_ROLES,
    SPLITS,
    TUMEMO_LABELS,
    SourceRecord,
    assign_splits,
    carve_test_split,
    carve_val_from_train,
    check_image_folder_layout,
    list_image_folder,
    list_manifest,
    list_split_folders,
    list_tumemo,
    mark_duplicates_and_labels,
)
from affectflow.stages.ingest.validate import RowRules, validate_rows

# What the stage writes; later stages name these columns through the constants.
IMAGE_PATH = "image_path"
TEXT_RAW = "text_raw"
TEXT = "text"
LABEL = "label"
LABEL_ID = "label_id"
SPLIT = "split"
LABEL_SET = "label_set"
TARGETS = "targets"
IMAGE_SHA256 = "image_sha256"
TRAIN, VAL, TEST = SPLITS
SPLIT_RECORD_FILE = "split.json"

SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (SOURCE_ID, pa.string()),
    ("dataset", pa.string()),
    (IMAGE_PATH, pa.string()),
    (TEXT_RAW, pa.string()),
    (TEXT, pa.string()),
    (LABEL, pa.string()),
    (LABEL_ID, pa.int32()),
    (LABEL_SET, pa.list_(pa.string())),
    (TARGETS, pa.list_(pa.float32())),
    (SPLIT, pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("image_format", pa.string()),
    (IMAGE_SHA256, pa.string()),
])

# Rows per decode task: enough to amortise sending the task to a worker process.
DECODE_BATCH = 16

LISTING_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("image_path", pa.string()), ("text", pa.string()),
    ("label", pa.string()), ("split", pa.string()), ("problem", pa.string()),
    ("detail", pa.string()), ("text_file", pa.string()),
    ("label_set", pa.list_(pa.string())), ("targets", pa.list_(pa.float64())),
])
DEFAULT_COLUMNS = {"id": "id", "image": "image", "text": "text", "label": "label", "split": "split"}


DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)
DEFAULT_TEST_SHARE = 0.1


class IngestParams(StageParams):
    """Where the data is and how strictly to validate it."""

    source: Literal["tumemo", "manifest", "image_folder"]
    path: Path = Field(description="TumEmo folder, manifest file, or image-folder root")
    dataset_name: str = Field("", description="name mixed into sample ids; default: folder name")
    image_dir: Path | None = Field(None, description="TumEmo images folder (default: path)")
    text_dir: Path | None = Field(None, description="TumEmo texts folder (default: path)")
    layout: Literal["class_folders", "split_folders"] = Field(
        "class_folders", description="image_folder: one folder per class, or split folders "
        "train/ val/ [test/] each holding one folder per class (the official FI layout)")
    test_share: float | None = Field(
        None, gt=0, lt=1, description="split_folders without test/: share of each train class "
        "carved out as test (seeded by split_seed); default 0.1")
    split_dir: Path | None = Field(None, description="image_folder: train/val/test.txt folder")
    columns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_COLUMNS),
        description="manifest column per role (id, image, text, label, split, label_set); "
                    "roles not given keep their default name, label_set has none")
    labels: list[str] | None = Field(None, description="allowed labels and categories (default "
                                                       "per source)")
    label_separator: str = Field(";", min_length=1,
                                 description="manifest: separator of the categories in a "
                                             "label_set cell")
    targets: list[str] = Field(default_factory=list,
                               description="manifest columns of numeric targets, e.g. valence, "
                                           "arousal, dominance")
    target_range: tuple[float, float] | None = Field(
        None, description="valid [low, high] of every target; values outside are rejected")
    hierarchy: list[LabelLevel] | None = Field(
        None, description="class tree of the label, coarsest level first (WebEmo 2 -> 7 -> 25)")
    roots: list[Path] | None = Field(
        None, description="folders every image and text file must resolve inside (symlinks "
                          "resolved); default: the source's own folders (a manifest's: its folder)")
    text_encodings: list[str] = Field(default_factory=lambda: ["utf-8", "iso-8859-1"])
    require_text: bool | None = Field(None, description="default: true except for image_folder")
    hashtags: Literal["strip_sign", "drop"] = "strip_sign"
    expand_contractions: bool = True
    min_image_side: int = Field(32, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1)
    max_image_bytes: int = Field(64 << 20, ge=1, description="larger image files are rejected")
    max_text_bytes: int = Field(1 << 20, ge=1, description="larger post texts are rejected")
    split_ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS
    split_seed: int = 0
    val_from_train: float = Field(0.0, ge=0, lt=1,
                                  description="share of the train split moved to val, for data "
                                              "sets whose split has no val (WebEmo)")
    shard_size: int = Field(256, ge=1)

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(f"path does not exist: {value} (create the dataset, e.g. "
                             f"`affectflow demo-data DIR`, or point the section's path at it)")
        return value

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(MANIFEST_ROLES))
        if unknown:
            raise ValueError(f"unknown manifest column roles {unknown}; the roles are "
                             f"{list(MANIFEST_ROLES)}")
        return {**DEFAULT_COLUMNS, **value}

    @field_validator("hierarchy")
    @classmethod
    def _a_tree(cls, value: list[LabelLevel] | None) -> list[LabelLevel] | None:
        if value is not None:
            check_hierarchy(value)
        return value

    @field_validator("text_encodings")
    @classmethod
    def _known_encodings(cls, value: list[str]) -> list[str]:
        import codecs
        for name in value:
            try:
                codecs.lookup(name)
            except LookupError:
                raise ValueError(f"unknown text encoding {name!r} (use e.g. utf-8, "
                                 "iso-8859-1)") from None
        return value

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> IngestParams:
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError(f"split_ratios {self.split_ratios} must be >= 0 and sum to 1")
        return self

    @model_validator(mode="after")
    def _annotations_fit_the_source(self) -> IngestParams:
        """Label sets and targets are manifest columns; a hierarchy's finest classes are the labels."""
        if self.source != "manifest" and ("label_set" in self.columns or self.targets):
            raise ValueError("columns.label_set and targets name manifest columns; use "
                             "source: manifest for multi-label or numeric annotations")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets {self.targets} name a column twice")
        if self.target_range is not None and not self.target_range[0] < self.target_range[1]:
            raise ValueError(f"target_range {self.target_range} must be [low, high] with low < high")
        if self.hierarchy is not None and self.labels is not None \
                and set(self.labels) != set(self.fine_classes or []):
            raise ValueError(f"labels {sorted(self.labels)} differ from the finest classes of the "
                             f"hierarchy {sorted(self.fine_classes or [])}; omit labels, they "
                             "default to those classes")
        return self

    @model_validator(mode="after")
    def _layout_keys_fit(self) -> IngestParams:
        """Keys that another layout would ignore are errors, not silently unused."""
        if self.layout == "split_folders":
            if self.source != "image_folder":
                raise ValueError("layout split_folders applies to source image_folder only")
            # Compared with the defaults, not model_fields_set: a run's saved config lists every key.
            given = [key for key, unused in (("split_dir", self.split_dir is None),
                                             ("split_ratios",
                                              self.split_ratios == DEFAULT_SPLIT_RATIOS),
                                             ("val_from_train", not self.val_from_train))
                     if not unused]
            if given:
                raise ValueError(f"{', '.join(given)} do not apply to layout split_folders, whose "
                                 "folders are the splits; remove them (test_share sets the test "
                                 "share carved from train when there is no test/ folder)")
        elif self.test_share is not None:
            raise ValueError("test_share applies to layout split_folders only; remove it, or "
                             "use split_ratios")
        if self.source == "image_folder":
            check_image_folder_layout(self.path, self.layout)
        return self

    @property
    def name(self) -> str:
        return self.dataset_name or self.path.resolve().name

    def dataset_roots(self) -> list[Path]:
        """The folders the dataset's files must lie inside."""
        if self.roots is not None:
            return list(self.roots)
        if self.source == "manifest":
            return [self.path.parent]
        return [self.path, *(folder for folder in (self.image_dir, self.text_dir) if folder)]

    @property
    def needs_text(self) -> bool:
        return self.require_text if self.require_text is not None else self.source != "image_folder"

    @property
    def fine_classes(self) -> list[str] | None:
        """The finest level's classes of the hierarchy, in declared order."""
        return hierarchy_classes(self.hierarchy)[-1] if self.hierarchy else None

    def allowed_labels(self, records: list[SourceRecord]) -> list[str] | None:
        if self.labels is not None:
            return self.labels
        if self.fine_classes is not None:
            return self.fine_classes
        if self.source == "tumemo":
            return list(TUMEMO_LABELS)
        if self.source == "image_folder":
            return sorted({r.label for r in records if r.label is not None})
        return None


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Counts per non-null value, most frequent first (the order `inspect` shows)."""
    counts = sorted(pc.value_counts(pc.drop_null(column)).to_pylist(), key=lambda row: -row["counts"])
    return {str(row["values"]): int(row["counts"]) for row in counts}


def manifest_records(params: IngestParams) -> list[SourceRecord]:
    """The manifest's rows as records, with its annotation columns parsed."""
    return list_manifest(params.path, params.columns, params.label_separator,
                         tuple(params.targets), params.needs_text)


def list_source(params: IngestParams) -> tuple[list[SourceRecord], dict[str, Any]]:
    """The listed records with their splits, and how the splits were made (for the summary)."""
    if params.source == "tumemo":
        records = list_tumemo(params.path, params.image_dir or params.path,
                              params.text_dir or params.path)
    elif params.source == "manifest":
        records = manifest_records(params)
    elif params.layout == "split_folders":
        records = list_split_folders(params.path)
    else:
        records = list_image_folder(params.path, params.split_dir)
    allowed = params.allowed_labels(records)
    mark_duplicates_and_labels(records, set(allowed) if allowed is not None else None,
                               tuple(params.targets), params.target_range)
    if params.layout == "split_folders":
        folders = sorted({record.split for record in records if record.split is not None})
        split_record: dict[str, Any] = {"layout": "split_folders", "folders": folders}
        if TEST not in folders:
            split_record |= carve_test_split(records, params.test_share or DEFAULT_TEST_SHARE,
                                             params.split_seed)
        return records, split_record
    assign_splits(records, params.split_ratios, params.split_seed)
    if params.val_from_train:
        carve_val_from_train(records, params.val_from_train, params.split_seed)
    return records, {"layout": params.layout if params.source == "image_folder" else params.source}


class IngestStage(Stage[IngestParams]):
    name = "ingest"
    inputs = ()
    Params = IngestParams
    schema = SCHEMA
    shard_parallel = True

    def source_fingerprint(self, params: IngestParams, settings: Any) -> str:
        """Every file the source lists or holds: the folders' trees, and for a manifest the
        manifest itself plus each image it names (by stat, or by content with
        `run.fingerprint: content`, which the runner applies)."""
        roots = [params.path] + [p for p in (params.image_dir, params.text_dir, params.split_dir) if p]
        parts = [tree_fingerprint(root) for root in roots]
        if params.source == "manifest":
            listed = [record.image_path for record in manifest_records(params)]
            parts.append(files_fingerprint(listed, params.path.parent))
        return hash_value(parts)

    def prepare(self, ctx: StageContext[IngestParams]) -> list[int]:
        params = ctx.params
        records, split_record = list_source(params)
        labels = params.allowed_labels(records)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        (ctx.work_dir / "labels.txt").write_text("\n".join(labels or []) + "\n")
        write_json(ctx.work_dir / SPLIT_RECORD_FILE, split_record)
        shard_ids = []
        for shard_id, start in enumerate(range(0, max(len(records), 1), params.shard_size)):
            chunk = records[start:start + params.shard_size]
            table = pa.Table.from_pylist([vars(r) for r in chunk], schema=LISTING_SCHEMA)
            write_parquet(ctx.work_dir / f"listing-{shard_id:05d}.parquet", table)
            shard_ids.append(shard_id)
        return shard_ids

    def process(self, ctx: StageContext[IngestParams], state: None, shard_id: int) -> ShardOutput:
        params = ctx.params
        listing = pq.read_table(ctx.work_dir / f"listing-{shard_id:05d}.parquet").to_pylist()
        label_names = [name for name in (ctx.work_dir / "labels.txt").read_text().splitlines()
                       if name]
        rules = RowRules(dataset=params.name, needs_text=params.needs_text,
                         text_encodings=tuple(params.text_encodings),
                         hashtags=params.hashtags, expand_contractions=params.expand_contractions,
                         min_image_side=params.min_image_side,
                         max_image_pixels=params.max_image_pixels,
                         label_ids={name: index for index, name in enumerate(label_names)},
                         base_dir=os.getcwd(), roots=real_roots(params.dataset_roots()),
                         max_image_bytes=params.max_image_bytes,
                         max_text_bytes=params.max_text_bytes)
        workers = ctx.settings.workers
        pool = decode_pool(workers)
        try:  # submitting to a pool whose worker died raises at once, like collecting does
            futures = [pool.submit(validate_rows, listing[start:start + DECODE_BATCH], rules)
                       for start in range(0, len(listing), DECODE_BATCH)]
            results = [pair for future in futures for pair in future.result()]
        except BrokenExecutor:
            discard_pool(workers, pool)
            raise RuntimeError(f"ingest shard {shard_id}: a decode worker process died (killed, or "
                               "a decoder crashed on one of the shard's images); rerun the stage "
                               "to retry with fresh workers") from None
        kept = [good for good, _ in results if good is not None]
        rejected = [bad for _, bad in results if bad is not None]
        return ShardOutput(rows_in=len(listing),
                           tables={MAIN_TABLE: pa.Table.from_pylist(kept, schema=SCHEMA)},
                           rejects=make_rejects(rejected))

    def finalize(self, ctx: StageContext[IngestParams]) -> dict[str, Any]:
        """Counts per split, label and category, each target's range, and how the splits were
        made (a carved test split: its share, seed, per-class counts and the hash of its ids),
        for `inspect` and the run summary."""
        table = StageArtifact(ctx.output_dir).read_all(columns=[SPLIT, LABEL, LABEL_SET, TARGETS])
        split_record = json.loads((ctx.work_dir / SPLIT_RECORD_FILE).read_text(encoding="utf-8"))
        summary: dict[str, Any] = {"splits": _value_counts(table[SPLIT]),
                                   "labels": _value_counts(pc.fill_null(table[LABEL], "<none>")),
                                   "split_record": split_record}
        if "label_set" in ctx.params.columns:
            summary["categories"] = _value_counts(pc.list_flatten(table[LABEL_SET]))
        if ctx.params.targets:
            values = pc.list_flatten(table[TARGETS]).to_numpy(zero_copy_only=False)
            values = values.reshape(-1, len(ctx.params.targets))
            summary["targets"] = {name: {stat: round(float(getattr(column, stat)()), 4)
                                         for stat in ("mean", "min", "max")} if len(column) else {}
                                  for name, column in zip(ctx.params.targets, values.T)}
        return summary
