"""Does a dataset path have the layout its source expects? Checked before a run starts.

The listing (`sources.py`) finds the same problems, but only once ingest runs; this looks at the
few files that decide whether a layout is right (the TumEmo label file's first lines and the
posts they name, class folders holding images, a manifest's header) in milliseconds, without
listing the dataset. Not imported by the ingest stage: its code version stays the listing's.
"""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq

from affectflow.stages.ingest.sources import IMAGE_SUFFIXES, SPLITS, TUMEMO_LABEL_FILE, required_columns
from affectflow.stages.ingest.stage import IngestParams

SAMPLED_POSTS = 5
"""TumEmo posts whose image and text files are looked for (the first ones the label file names)."""


def describe_layout(params: IngestParams, section: str) -> tuple[str, list[str]]:
    """(what was found, problems): one problem per line, naming the config key and the fix."""
    if params.source == "tumemo":
        return _tumemo(params, section)
    if params.source == "image_folder":
        return _image_folder(params, section)
    return _manifest(params, section)


def _tumemo(params: IngestParams, section: str) -> tuple[str, list[str]]:
    label_file = params.path / TUMEMO_LABEL_FILE
    if not label_file.is_file():
        return "", [f"{section}.path = {params.path}: no {TUMEMO_LABEL_FILE} (the TumEmo raw release "
                    f"keeps it beside the <id>.jpg / <id>.txt files); point {section}.path at that folder"]
    with label_file.open(encoding="utf-8", errors="replace") as handle:
        lines = [line.split() for line in islice(handle, 1, 1 + SAMPLED_POSTS) if line.strip()]
    if not lines or any(len(parts) != 2 for parts in lines):
        return "", [f"{section}.path: {label_file} does not read as a header line followed by "
                    f"'<id> <Label>' lines; is it the TumEmo label file?"]
    image_dir, text_dir = params.image_dir or params.path, params.text_dir or params.path
    problems = []
    for key, folder, suffix in (("image_dir", image_dir, ".jpg"), ("text_dir", text_dir, ".txt")):
        absent = [parts[0] for parts in lines if not (folder / f"{parts[0]}{suffix}").is_file()]
        if absent:
            problems.append(f"{section}.{key} = {folder}: the first posts of {TUMEMO_LABEL_FILE} have no "
                            f"{suffix} file there ({', '.join(absent[:3])}); set {section}.{key} to the "
                            f"folder holding <id>{suffix}")
    return f"TumEmo layout ({label_file.name}, posts {lines[0][0]}... found)", problems


def _image_folder(params: IngestParams, section: str) -> tuple[str, list[str]]:
    if not params.path.is_dir():
        return "", [f"{section}.path = {params.path} is not a folder (image_folder wants one "
                    f"sub-folder per class)"]
    if params.layout == "split_folders":
        return _split_folders(params, section)
    with_images = _classes_with_images(params.path)
    problems = []
    if not with_images:
        problems.append(f"{section}.path = {params.path}: no class sub-folder with images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}); image_folder wants <path>/<class>/<image>")
    if params.split_dir is not None:
        missing = [f"{split}.txt" for split in SPLITS if not (params.split_dir / f"{split}.txt").is_file()]
        if missing:
            problems.append(f"{section}.split_dir = {params.split_dir}: no {', '.join(missing)} "
                            f"(one 'class/file' per line); fix the folder or remove the key")
    return f"image folder with {len(with_images)} classes ({', '.join(with_images[:8])})", problems


def _split_folders(params: IngestParams, section: str) -> tuple[str, list[str]]:
    """The official FI layout; IngestParams has already checked that train/ and val/ exist."""
    splits = [split for split in SPLITS if (params.path / split).is_dir()]
    classes = {split: _classes_with_images(params.path / split) for split in splits}
    problems = [f"{section}.path = {params.path}: {split}/ has no class sub-folder with images; "
                f"layout split_folders wants <path>/{split}/<class>/<image>"
                for split in splits if not classes[split]]
    test = "test/ folder" if "test" in splits else "test carved from train/"
    train = classes["train"]
    return (f"split folders {', '.join(f'{split}/' for split in splits)} ({test}); "
            f"{len(train)} classes in train/ ({', '.join(train[:8])})"), problems


def _classes_with_images(root: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    return [name for name in classes if _has_image(root / name)]


def _has_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(Path(entry.name).suffix.lower() in IMAGE_SUFFIXES for entry in entries)


def _manifest_columns(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(pq.read_schema(path).names)
    with path.open(encoding="utf-8") as handle:
        if suffix == ".csv":
            import csv

            return next(csv.reader(handle), [])
        for line in handle:
            if line.strip():
                return list(json.loads(line))
    return []


def _manifest(params: IngestParams, section: str) -> tuple[str, list[str]]:
    if params.path.suffix.lower() not in {".csv", ".jsonl", ".ndjson", ".parquet"}:
        return "", [f"{section}.path = {params.path}: a manifest must be .csv, .jsonl or .parquet"]
    try:
        columns = _manifest_columns(params.path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return "", [f"{section}.path = {params.path}: the manifest's header cannot be read ({error})"]
    needed = required_columns(params.columns, tuple(params.targets), params.needs_text)
    problems = [f"{section}.{key} = {name!r} is not a column of {params.path}; set it to one of "
                f"{columns}" for key, name in needed if name not in columns]
    return f"manifest with columns {columns}", problems
