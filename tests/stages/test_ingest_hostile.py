"""Ingest of hostile datasets: special files, paths leading out of the dataset, bad ids, huge
files, odd encodings, rotated photos, pixel limits, and fingerprints that see the listed files."""

from __future__ import annotations

import codecs
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from affectflow.core.hashing import external_files_fingerprinted
from affectflow.core.images import EXIF_ORIENTATION, load_rgb
from affectflow.core.runs import RunStore
from affectflow.pipelines.inspect import stage_report
from affectflow.stages.ingest.sources import decode_text
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from affectflow.stages.partition.export import neutralise_formulas
from tests.conftest import write_image, write_tumemo
from tests.stages.test_ingest import ingest, reasons


@dataclass(frozen=True)
class ContentSettings:
    workers: int = 2
    fingerprint: str = "content"


def manifest(tmp_path: Path, rows: list[dict[str, Any]], name: str = "manifest.csv") -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_fifo_named_like_an_image_is_rejected_without_waiting(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {"1": ("Calm", "fine"), "2": ("Calm", "fine too")})
    (root / "1.jpg").unlink()
    os.mkfifo(root / "1.jpg")
    (root / "2.txt").unlink()
    os.mkfifo(root / "2.txt")
    started = time.monotonic()
    _, _, rejects = ingest(tmp_path, source="tumemo", path=root)
    assert reasons(rejects) == {"1": "not_a_regular_file", "2": "not_a_regular_file"}
    assert "FIFO" in rejects.set_index("source_id").loc["1", "detail"]
    assert time.monotonic() - started < 60


def test_paths_outside_the_dataset_root_are_rejected(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "secret.jpg"
    write_image(secret)
    write_image(tmp_path / "data" / "img" / "ok.jpg")
    (tmp_path / "data" / "img" / "link.jpg").symlink_to(secret)
    path = manifest(tmp_path, [
        {"id": "ok", "image": "img/ok.jpg", "text": "fine"},
        {"id": "up", "image": "../elsewhere/secret.jpg", "text": "escapes with .."},
        {"id": "abs", "image": str(secret), "text": "absolute path"},
        {"id": "link", "image": "img/link.jpg", "text": "symlink out"},
        {"id": "passwd", "image": "../../../../../../etc/passwd", "text": "system file"},
    ])
    _, rows, rejects = ingest(tmp_path, source="manifest", path=path)
    assert rows["source_id"].tolist() == ["ok"]
    assert reasons(rejects) == dict.fromkeys(["up", "abs", "link", "passwd"], "outside_dataset_root")
    # Roots are configurable: the other folder is allowed once it is listed.
    _, rows, _ = ingest(tmp_path / "again", source="manifest", path=path,
                        roots=[tmp_path / "data", tmp_path / "elsewhere"])
    assert sorted(rows["source_id"]) == ["abs", "link", "ok", "up"]


def test_ids_must_be_plain_names(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {"good": ("Calm", "fine")})
    with open(root / "all_data_id_and_label.txt", "a") as handle:
        handle.write("../escape Calm\nbell\x07 Calm\n")
    _, rows, rejects = ingest(tmp_path, source="tumemo", path=root)
    assert rows["source_id"].tolist() == ["good"]
    assert reasons(rejects) == {"../escape": "invalid_id", "bell\x07": "invalid_id"}
    write_image(tmp_path / "data" / "a.jpg")
    path = manifest(tmp_path, [{"id": "", "image": "a.jpg", "text": "empty id"},
                               {"id": "a/b", "image": "a.jpg", "text": "separator"},
                               {"id": "fine", "image": "a.jpg", "text": "ok"}])
    _, rows, rejects = ingest(tmp_path / "m", source="manifest", path=path)
    assert rows["source_id"].tolist() == ["fine"]
    assert sorted(rejects["reason"]) == ["invalid_id", "invalid_id"]


def test_byte_limits_per_image_and_per_text(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {"1": ("Calm", "short"), "2": ("Calm", "x" * 5000),
                                              "3": ("Calm", "fine")})
    write_image(root / "3.jpg", size=(400, 400))
    size = (root / "3.jpg").stat().st_size
    _, rows, rejects = ingest(tmp_path, source="tumemo", path=root, max_text_bytes=1000,
                              max_image_bytes=size - 1)
    assert rows["source_id"].tolist() == ["1"]
    assert reasons(rejects) == {"2": "text_file_too_large", "3": "image_file_too_large"}
    path = manifest(tmp_path, [{"id": "long", "image": "a.jpg", "text": "y" * 2000}])
    write_image(path.parent / "a.jpg")
    _, _, rejects = ingest(tmp_path / "m", source="manifest", path=path, max_text_bytes=1000)
    assert reasons(rejects) == {"long": "text_too_large"}


def test_text_decoding_reads_byte_order_marks_and_rejects_what_is_no_text(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {str(i): ("Calm", "x") for i in range(5)})
    (root / "0.txt").write_bytes(codecs.BOM_UTF16_LE + "héllo wörld".encode("utf-16-le"))
    (root / "1.txt").write_bytes(codecs.BOM_UTF32_BE + "ünïcode".encode("utf-32-be"))
    (root / "2.txt").write_bytes(codecs.BOM_UTF8 + b"with mark")
    (root / "3.txt").write_bytes("no mark here".encode("utf-16-le"))  # NULs in latin-1
    (root / "4.txt").write_bytes(b"\x1b\x07\x00\x01\x02")
    _, rows, rejects = ingest(tmp_path, source="tumemo", path=root)
    assert dict(zip(rows["source_id"], rows["text"])) == {"0": "héllo wörld", "1": "ünïcode",
                                                          "2": "with mark"}
    assert reasons(rejects) == {"3": "undecodable_text", "4": "undecodable_text"}
    assert decode_text(b"\x1b\x07\x1b", ["utf-8"]) == "\x1b\x07\x1b"
    path = manifest(tmp_path, [{"id": "ctl", "image": "a.jpg", "text": "\x1b\x07\u200b\x1b"},
                               {"id": "ansi", "image": "a.jpg", "text": "\x1b[31mred\x1b[0m"}])
    write_image(path.parent / "a.jpg")
    _, rows, rejects = ingest(tmp_path / "m", source="manifest", path=path)
    assert reasons(rejects) == {"ctl": "control_text"}
    assert rows["text"].tolist() == ["[31mred [0m"]  # the escape characters are gone


def rotated_portrait(path: Path) -> Path:
    """A 60x40 (landscape) pixel grid tagged EXIF orientation 6: displayed as a 40x60 portrait."""
    image = Image.new("RGB", (60, 40), (10, 200, 30))
    image.putpixel((0, 0), (255, 0, 0))
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_is_applied_to_recorded_sizes_and_decoded_pixels(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {"p": ("Calm", "a portrait")})
    rotated_portrait(root / "p.jpg")
    _, rows, _ = ingest(tmp_path, source="tumemo", path=root, min_image_side=32)
    assert (rows.iloc[0]["width"], rows.iloc[0]["height"]) == (40, 60)
    assert load_rgb(root / "p.jpg").size == (40, 60)


def test_max_image_pixels_is_honoured_above_and_below_pillows_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # stands in for Pillow's 89 M default
    root = write_tumemo(tmp_path / "tumemo", {"1": ("Calm", "64 x 64")})
    _, rows, _ = ingest(tmp_path / "raised", source="tumemo", path=root, max_image_pixels=5000)
    assert rows["source_id"].tolist() == ["1"]
    _, _, rejects = ingest(tmp_path / "lowered", source="tumemo", path=root,
                           max_image_pixels=4000)
    assert reasons(rejects) == {"1": "image_too_large"}


def test_a_manifests_fingerprint_covers_the_images_it_lists(tmp_path: Path) -> None:
    image = write_image(tmp_path / "images" / "a.jpg")
    path = manifest(tmp_path, [{"id": "a", "image": "../images/a.jpg", "text": "t"}])
    params = IngestParams(source="manifest", path=path, roots=[tmp_path])
    stat_mode, content_mode = ContentSettings(fingerprint="stat"), ContentSettings()

    def source(settings: ContentSettings) -> str | None:
        with external_files_fingerprinted(settings):  # as the runner calls it
            return IngestStage().source_fingerprint(params, settings)

    before = {mode: source(mode) for mode in (stat_mode, content_mode)}
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: same bytes
    assert source(stat_mode) != before[stat_mode]
    assert source(content_mode) == before[content_mode]
    write_image(image, colour=(1, 2, 3))  # new bytes
    assert source(content_mode) != before[content_mode]


def test_inspect_prints_no_terminal_control_characters(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {"1": ("Calm", "\x1b[2J\x1b[31mpwned\x07 hello")})
    ingest(tmp_path, source="tumemo", path=root)
    report = stage_report(RunStore(tmp_path / "artifacts", "run").stage("ingest"), samples=3)
    assert "pwned" in report and not any(ch in report for ch in "\x1b\x07")
    assert "\\x1b" in report  # shown as a visible escape


def test_csv_cells_that_spreadsheets_would_run_are_neutralised() -> None:
    table = pa.table({"text": ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "\tx", "fine", None],
                      "n": [1, 2, 3, 4, 5, 6, 7]})
    safe = neutralise_formulas(table)
    assert safe["text"].to_pylist() == ["'=HYPERLINK(\"x\")", "'+1", "'-2", "'@SUM(A1)", "'\tx",
                                        "fine", None]
    assert safe["n"].to_pylist() == table["n"].to_pylist()
