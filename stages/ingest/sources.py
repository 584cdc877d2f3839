"""Listing the source layouts (TumEmo raw, manifest file, image folder by class or by split) into
records.

Listing is cheap (no image decoding): it reads ids, labels, label sets, numeric targets and
texts, finds duplicate ids, unknown labels and bad annotation cells, and assigns splits.
Problems found here travel with the record and become rejects in the ingest stage, so every
listed row is accounted for.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import random
import stat
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectflow.core.errors import UserError
from affectflow.core.files import FileProblem, read_dataset_file
from affectflow.core.hashing import hash_value
from affectflow.stages.ingest.annotations import out_of_range, parse_label_set, parse_targets

if TYPE_CHECKING:
    import pandas as pd

TUMEMO_LABELS = ("Love", "Happy", "Calm", "Bored", "Sad", "Angry", "Fear")
TUMEMO_LABEL_FILE = "all_data_id_and_label.txt"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = SPLITS


@dataclass
class SourceRecord:
    """One listed post or image; `problem`/`detail` are set when listing already rejects it."""

    source_id: str
    image_path: str
    text: str | None
    label: str | None
    split: str | None = None
    problem: str | None = None
    detail: str | None = None
    # A text still to be read (TumEmo): the decode workers read it, in parallel, not the listing.
    text_file: str | None = None
    label_set: list[str] | None = None  # multi-label categories (manifest `label_set` column)
    targets: list[float] | None = None  # numeric targets in the order of `ingest.targets`


# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                    (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(data: bytes, encodings: Iterable[str]) -> str | None:
    """The text of `data`: the encoding its byte-order mark names, else the first of `encodings`
    that decodes it strictly to text without NUL characters (UTF-16 read as latin-1 decodes
    "successfully" into every other character a NUL); None when none does."""
    marked = [encoding for bom, encoding in BYTE_ORDER_MARKS if data.startswith(bom)][:1]
    for encoding in [*marked, *encodings]:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return text
    return None


def only_control_characters(text: str) -> bool:
    """True for text with characters but none a person could read (controls, format marks,
    spaces only)."""
    return bool(text) and all(unicodedata.category(ch)[0] in "CZ" or ch.isspace() for ch in text)


def read_text_file(path: Path, encodings: Iterable[str], max_bytes: int,
                   roots: tuple[str, ...]) -> tuple[str | None, str | None, str | None]:
    """(text, problem, detail) for a post's text file."""
    try:
        data = read_dataset_file(path, "text", max_bytes, roots)
    except FileProblem as problem:
        return None, problem.reason, problem.detail
    text = decode_text(data, encodings)
    if text is None:
        return None, "undecodable_text", f"{path} is not valid {' or '.join(encodings)}"
    return text, None, None


def id_problem(source_id: str, parts: int = 1) -> str | None:
    """Why a source id is unusable, or None: ids name files (TumEmo's `<id>.jpg`) and appear in
    reports, so they must be non-empty, free of control characters, and made of `parts` names
    joined by '/' with no other separator and no '.' or '..'."""
    if not source_id.strip():
        return "empty id"
    if any(unicodedata.category(ch)[0] == "C" for ch in source_id):
        return f"id {source_id!r} holds control characters"
    names = source_id.split("/")
    if len(names) != parts or "\\" in source_id or any(name in ("", ".", "..") for name in names):
        return f"id {source_id!r} is not {'a plain name' if parts == 1 else f'{parts} plain names'}"
    return None


def regular_file(path: Path, what: str) -> Path:
    """`path`, when it is a regular file: a label, split or manifest file that is a FIFO, device
    or folder is a config error, not something to wait on."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}", hint=f"check ingest.path ({path})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} is not a regular file",
                        hint="point ingest.path at the dataset's real files")
    return path


def read_listing_file(path: Path, what: str) -> str:
    """A label or split file (UTF-8; undecodable bytes replaced, so a bad line is reported)."""
    return regular_file(path, what).read_text(encoding="utf-8", errors="replace")


def list_tumemo(root: Path, image_dir: Path, text_dir: Path) -> list[SourceRecord]:
    """TumEmo raw release: a label file (header, then `<id> <Label>`), `<id>.jpg`, `<id>.txt`
    (read later by the decode workers, `text_file`)."""
    label_file = root / TUMEMO_LABEL_FILE
    if not label_file.exists():
        raise UserError(f"TumEmo label file not found: {label_file}",
                        hint="ingest.path must be the folder holding all_data_id_and_label.txt")
    records = []
    # Plain string joins: the listing runs before any decoding starts, and a pathlib join per
    # path made it most of ingest's serial set-up time.
    image_root, text_root = str(image_dir), str(text_dir)
    lines = read_listing_file(label_file, "TumEmo label file").splitlines()
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            records.append(SourceRecord(f"line:{line_no}", "", None, None, problem="malformed_line",
                                        detail=f"{label_file.name}:{line_no}: {line.strip()[:80]!r}"))
            continue
        post_id, label = parts
        problem = id_problem(post_id)
        if problem:
            records.append(SourceRecord(post_id, "", None, label, problem="invalid_id",
                                        detail=f"{label_file.name}:{line_no}: {problem}"))
            continue
        records.append(SourceRecord(post_id, os.path.join(image_root, f"{post_id}.jpg"), None, label,
                                    text_file=os.path.join(text_root, f"{post_id}.txt")))
    return records


def _read_manifest_frame(path: Path) -> pd.DataFrame:
    import pandas as pd  # only to read a manifest: listing runs validates configs without it

    suffix = path.suffix.lower()
    regular_file(path, "manifest")
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    if suffix in {".jsonl", ".ndjson"}:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        return pd.DataFrame(rows).astype(object)
    if suffix == ".parquet":
        return pd.read_parquet(path).astype(object)
    raise UserError(f"unsupported manifest format {path.suffix!r} for {path}",
                    hint="use a .csv, .jsonl or .parquet manifest")


MANIFEST_ROLES = ("id", "image", "text", "label", "split", "label_set")


def required_columns(columns: dict[str, str], targets: tuple[str, ...] = (),
                     needs_text: bool = True) -> list[tuple[str, str]]:
    """(config key, column name) of every column a manifest must have: id, image, text (when
    text is required), the label set column when one is named, and each numeric target."""
    needed = [(f"columns.{role}", columns[role])
              for role in ("id", "image", "text") if role != "text" or needs_text]
    if "label_set" in columns:
        needed.append(("columns.label_set", columns["label_set"]))
    return needed + [("targets", name) for name in targets]


def list_manifest(path: Path, columns: dict[str, str], label_separator: str = ";",
                  targets: tuple[str, ...] = (), needs_text: bool = True) -> list[SourceRecord]:
    """Manifest with id, image path (relative to the manifest's folder), text (optional when no
    text is required), and optional label, split, label set (`columns.label_set`) and numeric
    target columns (`targets`)."""
    frame = _read_manifest_frame(path)
    for key, name in required_columns(columns, targets, needs_text):
        if name not in frame.columns:
            raise UserError(f"manifest {path} has no column '{name}' (ingest {key})",
                            hint=f"set ingest {key} to one of {list(frame.columns)}")

    def cell(row: pd.Series, role: str) -> str | None:
        name = columns.get(role)
        if not name or name not in row.index:
            return None
        value = row[name]
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    records = []
    for _, row in frame.iterrows():
        image = cell(row, "image") or ""
        image_path = Path(image) if os.path.isabs(image) else path.parent / image
        split = cell(row, "split")
        source_id = cell(row, "id") or ""
        problem = id_problem(source_id)
        record = SourceRecord(source_id, str(image_path), cell(row, "text"),
                              cell(row, "label") or None, split=split or None)
        problems = [("invalid_id", problem)] if problem else []
        if "label_set" in columns:
            record.label_set, *parsed = parse_label_set(row[columns["label_set"]], label_separator)
            problems.append(parsed)
        if targets:
            record.targets, *parsed = parse_targets([row[name] for name in targets], targets)
            problems.append(parsed)
        record.problem, record.detail = next(
            ((problem, detail) for problem, detail in problems if problem), (None, None))
        records.append(record)
    return records


def _read_split_files(split_dir: Path) -> dict[str, str]:
    """Map `class/file` -> split from train.txt / val.txt / test.txt."""
    assignment = {}
    for split in SPLITS:
        file = split_dir / f"{split}.txt"
        if not file.is_file():
            raise UserError(f"split file missing: {file}",
                            hint="ingest.split_dir needs train.txt, val.txt and test.txt")
        for line in read_listing_file(file, "split file").splitlines():
            if line.strip():
                assignment[line.strip()] = split
    return assignment


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _class_folder_records(root: Path, prefix: str, split: str | None,
                          splits: dict[str, str]) -> list[SourceRecord]:
    """Images of the class folders under `root`, with ids `prefix` + `class/file`."""
    records = []
    for class_dir in _folders(root):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            source_id = f"{prefix}{class_dir.name}/{file.name}"
            problem = id_problem(f"{class_dir.name}/{file.name}", parts=2)
            records.append(SourceRecord(source_id, str(file), None, class_dir.name,
                                        split=split or splits.get(source_id),
                                        problem="invalid_id" if problem else None, detail=problem))
    return records


def check_image_folder_layout(root: Path, layout: str) -> None:
    """ValueError naming the fix when the folders under `root` do not fit `layout` (checked with
    the config, before any work): a split-folder tree read as class folders would train on the
    classes "train" and "val"."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; source image_folder reads a folder of class "
                         "folders (or of split folders with layout: split_folders)")
    names = {folder.name for folder in _folders(root)}
    if layout == "class_folders":
        if TRAIN in names and names <= set(SPLITS):
            raise ValueError(f"{root} holds split folders {sorted(names)}, not class folders; set "
                             "layout: split_folders (class folders under train/ and val/, the "
                             "official FI layout)")
        return
    missing = [name for name in (TRAIN, VAL) if name not in names]
    unexpected = sorted(names - set(SPLITS))
    if missing or unexpected:
        problem = (f"has no {' or '.join(f'{name}/' for name in missing)} folder" if missing
                   else f"has folders other than {', '.join(SPLITS)}: {unexpected}")
        raise ValueError(f"layout split_folders: {root} {problem}; point path at the folder "
                         "holding train/ and val/ (each with one folder per class), or use "
                         "layout: class_folders")


def list_image_folder(root: Path, split_dir: Path | None) -> list[SourceRecord]:
    """One sub-folder per class (FI / Emotion6 style); ids are `class/file` paths."""
    splits = _read_split_files(split_dir) if split_dir else {}
    return _class_folder_records(root, "", None, splits)


def list_split_folders(root: Path) -> list[SourceRecord]:
    """The official FI layout (`check_image_folder_layout`): class folders under `train/` and
    `val/` (and `test/` when the dataset has one); ids are `split/class/file`. An image directly
    in a split folder has no class and is rejected (`no_class_folder`)."""
    names = {folder.name for folder in _folders(root)}
    records = []
    for split in (name for name in SPLITS if name in names):
        folder = root / split
        records += _class_folder_records(folder, f"{split}/", split, {})
        records += [SourceRecord(f"{split}/{file.name}", str(file), None, None, split=split,
                                 problem="no_class_folder",
                                 detail=f"{file} is not inside a class folder of {split}/")
                    for file in sorted(folder.iterdir())
                    if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES]
    return records


def _stratified(records: Iterable[SourceRecord]) -> list[list[SourceRecord]]:
    """Records grouped by label (unlabelled ones in one group), each group sorted by id, in a
    fixed group order: what seeded splits shuffle, so they do not depend on listing order."""
    by_label: dict[str | None, list[SourceRecord]] = defaultdict(list)
    for record in records:
        by_label[record.label].append(record)
    return [sorted(by_label[label], key=lambda record: record.source_id)
            for label in sorted(by_label, key=lambda value: (value is None, str(value)))]


def assign_splits(records: list[SourceRecord], ratios: tuple[float, float, float],
                  seed: int) -> None:
    """Seeded stratified train/val/test split for records without one (per label, in order)."""
    rng = random.Random(seed)
    for group in _stratified(r for r in records if r.split is None and r.problem is None):
        rng.shuffle(group)
        n_train = round(len(group) * ratios[0])
        n_val = round(len(group) * ratios[1])
        for index, record in enumerate(group):
            record.split = "train" if index < n_train else "val" if index < n_train + n_val else "test"


def carve_from_train(records: list[SourceRecord], split: str, share: float,
                     seed: int) -> list[SourceRecord]:
    """Move a seeded, stratified `share` of each label's usable train records to `split`
    (round(n * share) of a label's n) and return them; the shuffle is the seeded one of
    `assign_splits`, over the same label groups."""
    rng = random.Random(seed)
    carved = []
    for group in _stratified(r for r in records if r.split == TRAIN and r.problem is None):
        rng.shuffle(group)
        for record in group[:round(len(group) * share)]:
            record.split = split
            carved.append(record)
    return carved


def carve_val_from_train(records: list[SourceRecord], share: float, seed: int) -> None:
    """Move a seeded, stratified `share` of the train rows to val, for data sets whose split
    gives only train and test (WebEmo): model selection then never looks at test."""
    if any(r.split == VAL for r in records if r.problem is None):
        raise UserError("ingest.val_from_train is set, but the data set already has val rows",
                        hint="remove val_from_train (it is for splits with only train and test), "
                             "or drop the val rows")
    carve_from_train(records, VAL, share, seed)


def carve_test_split(records: list[SourceRecord], share: float, seed: int) -> dict[str, Any]:
    """Move a seeded, stratified `share` of each class's train records to test (a split-folder
    data set without test/, such as FI), and return the record of it for the ingest summary
    (the carved ids' hash identifies the exact split)."""
    carved = carve_from_train(records, TEST, share, seed)
    per_label = Counter(record.label for record in carved)
    return {"test_carved_from": TRAIN, "test_share": share, "split_seed": seed,
            "stratified_by": "label", "carved_per_label": dict(sorted(per_label.items())),
            "carved_rows": len(carved),
            "carved_ids_sha256": hash_value(sorted(record.source_id for record in carved))}


def mark_duplicates_and_labels(records: list[SourceRecord], allowed: set[str] | None,
                               target_names: tuple[str, ...] = (),
                               target_range: tuple[float, float] | None = None) -> None:
    """Reject repeated ids (the first occurrence is kept), unknown labels and categories,
    targets outside their range and unknown splits."""
    seen: set[str] = set()
    for record in records:
        if record.problem:
            continue
        if record.source_id in seen:
            record.problem, record.detail = "duplicate_id", f"id {record.source_id!r} seen before"
            continue
        seen.add(record.source_id)
        unknown = sorted({c for c in record.label_set or [] if allowed is not None and c not in allowed})
        if allowed is not None and record.label is not None and record.label not in allowed:
            record.problem = "unknown_label"
            record.detail = f"label {record.label!r} not in {sorted(allowed)}"
        elif unknown:
            record.problem = "unknown_label"
            record.detail = f"categories {unknown} not in {sorted(allowed or [])}"
        elif record.targets is not None and target_range is not None \
                and (detail := out_of_range(record.targets, target_names, target_range)):
            record.problem, record.detail = "target_out_of_range", detail
        elif record.split is not None and record.split not in SPLITS:
            record.problem, record.detail = "unknown_split", f"split {record.split!r}"
