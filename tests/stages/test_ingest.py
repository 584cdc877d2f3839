"""Ingest of each source kind and every reject reason; accounting always closes."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from affectflow.core.errors import UserError
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.stages.ingest.decode_pool import _POOLS, decode_pool
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from tests.conftest import write_image, write_tumemo


@dataclass(frozen=True)
class Settings:
    workers: int = 2


def ingest(tmp_path: Path, **params: Any) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    store = RunStore(tmp_path / "artifacts", "run")
    store.create({}, {})
    manifest = run_stage(StageJob(store, IngestStage(), IngestParams(**params), Settings()))
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    artifact = store.stage("ingest")
    rows = artifact.read_all().to_pandas() if manifest["rows_out"] else pd.DataFrame()
    return manifest, rows, artifact.rejects().to_pandas()


def reasons(rejects: pd.DataFrame) -> dict[str, str]:
    return dict(zip(rejects["source_id"], rejects["reason"]))


def test_tumemo_every_reject_reason(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {
        "1": ("Happy", "so happy today #sunshine @bob https://t.co/x can't wait"),
        "2": ("Sad", "   "),
        "3": ("Calm", "fine"), "4": ("Calm", "fine"), "5": ("Calm", "fine"),
        "6": ("Calm", "fine"), "7": ("Calm", "fine"), "8": ("Joyful", "unknown label"),
        "9": ("Fear", "latin-1 text"), "10": ("Love", "no text file"),
        "11": ("Angry", "@only https://t.co/only"),
    })
    (root / "3.jpg").write_bytes(b"")
    data = (root / "4.jpg").read_bytes()
    (root / "4.jpg").write_bytes(data[: len(data) // 2])
    (root / "5.jpg").write_bytes(b"this is not an image at all")
    write_image(root / "6.jpg", size=(10, 10))
    (root / "7.jpg").unlink()
    (root / "9.txt").write_bytes("caf\xe9 triste".encode("latin-1"))
    (root / "10.txt").unlink()
    with open(root / "all_data_id_and_label.txt", "a") as handle:
        handle.write("1 Happy\nthis line is malformed\n")

    manifest, rows, rejects = ingest(tmp_path, source="tumemo", path=root,
                                     text_encodings=["utf-8"], dataset_name="t")
    assert reasons(rejects) == {
        "2": "empty_text", "3": "zero_byte_image", "4": "truncated_image", "5": "unreadable_image",
        "6": "image_too_small", "7": "missing_image", "8": "unknown_label",
        "9": "undecodable_text", "10": "missing_text", "11": "empty_text",
        "1": "duplicate_id", "line:14": "malformed_line"}
    assert manifest["rows_in"] == 13 and manifest["rows_out"] == 1
    row = rows.iloc[0]
    assert row["text_raw"].startswith("so happy today #sunshine")
    assert row["text"] == "so happy today sunshine cannot wait"
    assert (row["width"], row["height"], row["image_format"]) == (64, 64, "JPEG")
    assert len(row["sample_id"]) == 32 and len(row["image_sha256"]) == 64
    assert row["label"] == "Happy" and row["label_id"] == 1


def test_tumemo_latin1_fallback_and_decompression_limit(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {"1": ("Sad", "x"), "2": ("Sad", "y")})
    (root / "1.txt").write_bytes("caf\xe9 triste".encode("latin-1"))
    write_image(root / "2.jpg", size=(300, 300))
    _, rows, rejects = ingest(tmp_path, source="tumemo", path=root, max_image_pixels=200 * 200)
    assert rows["text"].tolist() == ["café triste"]
    assert reasons(rejects) == {"2": "image_too_large"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_sources(tmp_path: Path, fmt: str) -> None:
    write_image(tmp_path / "img" / "a.png", fmt="PNG")
    write_image(tmp_path / "img" / "b.jpg")
    records = [{"post": "a", "file": "img/a.png", "body": "a red car", "emo": "joy", "split": "train"},
               {"post": "b", "file": "img/b.jpg", "body": "a blue boat", "emo": "anger", "split": "test"},
               {"post": "c", "file": "img/missing.jpg", "body": "gone", "emo": "joy", "split": "val"},
               {"post": "d", "file": "img/a.png", "body": "bad split", "emo": "joy", "split": "holdout"}]
    path = tmp_path / f"manifest.{fmt}"
    frame = pd.DataFrame(records)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records))
    else:
        frame.to_parquet(path)
    columns = {"id": "post", "image": "file", "text": "body", "label": "emo", "split": "split"}
    _manifest, rows, rejects = ingest(tmp_path, source="manifest", path=path, columns=columns)
    assert rows["source_id"].tolist() == ["a", "b"]
    assert rows["split"].tolist() == ["train", "test"]
    assert rows["image_format"].tolist() == ["PNG", "JPEG"]
    assert reasons(rejects) == {"c": "missing_image", "d": "unknown_split"}


def test_manifest_with_missing_column_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame([{"id": "a", "text": "x"}]).to_csv(path, index=False)
    with pytest.raises(UserError, match="no column 'image'"):
        ingest(tmp_path, source="manifest", path=path)


def test_a_partial_column_mapping_keeps_the_default_names_and_unknown_roles_fail(
        tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    path = tmp_path / "m.csv"
    pd.DataFrame([{"id": "a", "image": "a.jpg", "body": "hello", "label": "joy"}]).to_csv(path, index=False)
    _, rows, _ = ingest(tmp_path, source="manifest", path=path, columns={"text": "body"})
    assert rows["text"].tolist() == ["hello"] and rows["label"].tolist() == ["joy"]
    with pytest.raises(ValidationError, match="unknown manifest column roles"):
        IngestParams(source="manifest", path=path, columns={"caption": "body"})


def annotated_manifest(tmp_path: Path, fmt: str = "csv") -> Path:
    """Emotic-style rows: a category set and valence / arousal / dominance, one bad cell each."""
    write_image(tmp_path / "img.jpg")
    cells = [  # id, categories, valence, arousal, dominance
        ("good", "Peace;Happiness", "6", "3.5", "7"),
        ("one", "Fear", "2", "8", "3"),
        ("unlabelled", "", "", "", ""),
        ("unknown", "Peace;Boredom", "5", "5", "5"),
        ("repeat", "Peace;Peace", "5", "5", "5"),
        ("hole", "Peace;;Fear", "5", "5", "5"),
        ("partial", "Fear", "4", "", "5"),
        ("word", "Fear", "4", "high", "5"),
        ("nan", "Fear", "nan", "5", "5"),
        ("range", "Fear", "11", "5", "5"),
    ]
    records = [{"id": i, "image": "img.jpg", "text": "", "cats": c, "valence": v, "arousal": a,
                "dominance": d} for i, c, v, a, d in cells]
    path = tmp_path / f"emotic.{fmt}"
    if fmt == "csv":
        pd.DataFrame(records).to_csv(path, index=False)
    else:  # JSONL with real lists and numbers, as a converted Emotic annotation would be
        for record in records:
            record["cats"] = [c for c in record["cats"].split(";")] if record["cats"] else None
            for key in ("valence", "arousal", "dominance"):
                record[key] = None if record[key] == "" else record[key]
        path.write_text("\n".join(json.dumps(r) for r in records))
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_label_sets_and_targets_are_validated_cell_by_cell(tmp_path: Path, fmt: str) -> None:
    path = annotated_manifest(tmp_path, fmt)
    manifest, rows, rejects = ingest(
        tmp_path, source="manifest", path=path, require_text=False,
        columns={"label_set": "cats"}, labels=["Peace", "Happiness", "Fear"],
        targets=["valence", "arousal", "dominance"], target_range=(1, 10))
    assert reasons(rejects) == {"unknown": "unknown_label", "repeat": "bad_label_set",
                                "hole": "bad_label_set", "partial": "missing_target",
                                "word": "bad_target", "nan": "bad_target",
                                "range": "target_out_of_range"}
    assert "Boredom" in rejects.set_index("source_id").loc["unknown", "detail"]
    assert "valence = 11 outside [1, 10]" in rejects.set_index("source_id").loc["range", "detail"]
    rows = rows.set_index("source_id")
    assert list(rows.loc["good", "label_set"]) == ["Peace", "Happiness"]
    assert list(rows.loc["good", "targets"]) == pytest.approx([6, 3.5, 7])
    assert rows.loc["unlabelled", "label_set"] is None and rows.loc["unlabelled", "targets"] is None
    assert manifest["summary"]["categories"] == {"Peace": 1, "Happiness": 1, "Fear": 1}
    assert manifest["summary"]["targets"]["arousal"] == {"mean": 5.75, "min": 3.5, "max": 8.0}


def test_annotation_columns_must_exist_and_belong_to_a_manifest(tmp_path: Path) -> None:
    from affectflow.core.errors import UserError
    path = annotated_manifest(tmp_path)
    with pytest.raises(UserError, match=r"no column 'pleasure' \(ingest targets\)"):
        ingest(tmp_path, source="manifest", path=path, targets=["valence", "pleasure"])
    with pytest.raises(UserError, match=r"no column 'categories' \(ingest columns\.label_set\)"):
        ingest(tmp_path, source="manifest", path=path, columns={"label_set": "categories"})
    with pytest.raises(ValidationError, match="use source: manifest"):
        IngestParams(source="image_folder", path=tmp_path, targets=["valence"])
    with pytest.raises(ValidationError, match="low < high"):
        IngestParams(source="manifest", path=path, targets=["valence"], target_range=(9, 1))


TREE = [{"name": "polarity", "groups": {"positive": ["joy", "love"], "negative": ["anger"]}},
        {"name": "emotion", "groups": {"joy": ["cheer", "zest"], "love": ["lust"],
                                       "anger": ["rage", "envy"]}},
        {"name": "fine"}]


def test_a_hierarchy_must_be_a_tree_whose_leaves_are_the_labels(tmp_path: Path) -> None:
    params = IngestParams(source="image_folder", path=tmp_path, hierarchy=TREE)
    assert params.allowed_labels([]) == ["cheer", "zest", "lust", "rage", "envy"]
    broken = {
        "at least two levels": TREE[:1],
        "must not list groups": [TREE[0], TREE[1], {"name": "fine", "groups": {"x": ["y"]}}],
        "more than one group": [{"name": "p", "groups": {"a": ["x"], "b": ["x"]}}, {"name": "f"}],
        "gives it the classes": [TREE[0], {"name": "emotion", "groups": {"joy": ["cheer"]}},
                                 {"name": "fine"}],
        "repeat a name": [TREE[0], {**TREE[1], "name": "polarity"}, TREE[2]],
        "hold no class": [{"name": "p", "groups": {"a": []}}, {"name": "f"}],
    }
    for message, hierarchy in broken.items():
        with pytest.raises(ValidationError, match=message):
            IngestParams(source="image_folder", path=tmp_path, hierarchy=hierarchy)
    with pytest.raises(ValidationError, match="differ from the finest classes"):
        IngestParams(source="image_folder", path=tmp_path, hierarchy=TREE, labels=["cheer"])


def test_hierarchical_labels_outside_the_tree_are_rejected(tmp_path: Path) -> None:
    for label in ("cheer", "rage", "anger"):  # "anger" is a middle-level class, not a leaf
        write_image(tmp_path / "webemo" / label / "0.jpg")
    _, rows, rejects = ingest(tmp_path, source="image_folder", path=tmp_path / "webemo",
                              hierarchy=TREE)
    assert sorted(rows["label"]) == ["cheer", "rage"]
    assert reasons(rejects) == {"anger/0.jpg": "unknown_label"}
    assert dict(zip(rows["label"], rows["label_id"])) == {"cheer": 0, "rage": 3}


def test_val_is_carved_from_train_when_the_split_has_none(tmp_path: Path) -> None:
    records = [{"id": f"{label}{i}", "image": "img.jpg", "text": "x", "label": label,
                "split": "test" if i < 2 else "train"} for label in ("a", "b") for i in range(12)]
    write_image(tmp_path / "img.jpg")
    path = tmp_path / "m.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    _, rows, _ = ingest(tmp_path, source="manifest", path=path, val_from_train=0.1)
    counts = rows.groupby(["label", "split"]).size().to_dict()
    assert counts == {("a", "test"): 2, ("a", "train"): 9, ("a", "val"): 1,
                      ("b", "test"): 2, ("b", "train"): 9, ("b", "val"): 1}
    assert set(rows[rows["split"] == "test"]["source_id"]) == {"a0", "a1", "b0", "b1"}
    from affectflow.core.errors import UserError
    records[2]["split"] = "val"
    pd.DataFrame(records).to_csv(path, index=False)
    with pytest.raises(UserError, match="already has val rows"):
        ingest(tmp_path / "again", source="manifest", path=path, val_from_train=0.1)


def test_image_folder_with_stratified_split(tmp_path: Path) -> None:
    for label in ("anger", "awe"):
        for index in range(10):
            write_image(tmp_path / "fi" / label / f"{index}.jpg")
    (tmp_path / "fi" / "awe" / "notes.txt").write_text("not an image")
    _, rows, rejects = ingest(tmp_path, source="image_folder", path=tmp_path / "fi")
    assert len(rows) == 20 and rejects.empty
    counts = rows.groupby(["label", "split"]).size().to_dict()
    assert counts == {("anger", "test"): 1, ("anger", "train"): 8, ("anger", "val"): 1,
                      ("awe", "test"): 1, ("awe", "train"): 8, ("awe", "val"): 1}
    assert sorted(rows["label_id"].unique()) == [0, 1]
    _, again, _ = ingest(tmp_path / "again", source="image_folder", path=tmp_path / "fi")
    assert rows.set_index("source_id")["split"].equals(again.set_index("source_id")["split"])


def test_image_folder_with_split_files(tmp_path: Path) -> None:
    for label in ("anger", "awe"):
        write_image(tmp_path / "fi" / label / "0.jpg")
        write_image(tmp_path / "fi" / label / "1.jpg")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("anger/0.jpg\nawe/0.jpg\n")
    (splits / "val.txt").write_text("anger/1.jpg\n")
    (splits / "test.txt").write_text("awe/1.jpg\n")
    _, rows, _ = ingest(tmp_path, source="image_folder", path=tmp_path / "fi", split_dir=splits)
    assert dict(zip(rows["source_id"], rows["split"])) == {
        "anger/0.jpg": "train", "anger/1.jpg": "val", "awe/0.jpg": "train", "awe/1.jpg": "test"}


def test_demo_dataset_ingests_with_its_planted_bad_files(demo_dir: Path, tmp_path: Path) -> None:
    manifest, rows, rejects = ingest(tmp_path, source="tumemo", path=demo_dir / "tumemo",
                                     shard_size=16)
    assert manifest["rows_in"] == 61
    assert sorted(rejects["reason"]) == ["duplicate_id", "empty_text", "truncated_image",
                                         "zero_byte_image"]
    assert len(manifest["shard_ids"]) == 4
    assert set(rows["split"]) == {"train", "val", "test"}


def test_params_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="path does not exist"):
        IngestParams(source="tumemo", path=tmp_path / "nope")
    with pytest.raises(ValidationError, match="unknown text encoding"):
        IngestParams(source="tumemo", path=tmp_path, text_encodings=["klingon"])
    with pytest.raises(ValidationError, match="sum to 1"):
        IngestParams(source="tumemo", path=tmp_path, split_ratios=(0.5, 0.1, 0.1))


def test_a_dead_decode_worker_fails_its_shard_clearly_and_the_next_run_recovers(
        tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {str(i): ("Calm", f"post {i}") for i in range(6)})
    ingest(tmp_path / "first", source="tumemo", path=root)
    pool = decode_pool(Settings().workers)
    if not isinstance(pool, ProcessPoolExecutor):
        pytest.skip("decoding runs on threads on this platform")
    victim = next(iter(pool._processes.values()))  # the pool's own worker table
    victim.kill()
    victim.join()
    with pytest.raises(RuntimeError, match="decode worker process died"):
        ingest(tmp_path / "second", source="tumemo", path=root)
    manifest, rows, _ = ingest(tmp_path / "third", source="tumemo", path=root)
    assert manifest["rows_out"] == 6 and len(rows) == 6
    assert decode_pool(Settings().workers) is not pool


def test_decoding_in_worker_processes_gives_the_rows_threads_give(tmp_path: Path) -> None:
    root = write_tumemo(tmp_path / "tumemo", {str(i): ("Sad", f"sad post {i} #rain") for i in range(9)})
    (root / "4.jpg").write_bytes(b"")
    _, in_processes, rejected_in_processes = ingest(tmp_path / "a", source="tumemo", path=root,
                                                    shard_size=4)
    with ThreadPoolExecutor(max_workers=2) as threads:
        _POOLS[Settings().workers], previous = threads, _POOLS.get(Settings().workers)
        try:
            _, in_threads, rejected_in_threads = ingest(tmp_path / "b", source="tumemo",
                                                        path=root, shard_size=4)
        finally:
            _POOLS[Settings().workers] = previous
    pd.testing.assert_frame_equal(in_processes, in_threads)
    pd.testing.assert_frame_equal(rejected_in_processes, rejected_in_threads)


def test_relative_paths_follow_the_callers_folder_not_the_workers(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode processes are forked once and keep the folder they started in; a relative
    dataset path must still mean the folder the caller is in now (a notebook that changes
    folder, or a second demo run in another working folder)."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        write_tumemo(folder / "posts", {str(i): ("Calm", f"calm post {i}") for i in range(5)})
    monkeypatch.chdir(first)
    ingest(first, source="tumemo", path=Path("posts"))  # the shared decode processes exist now
    shutil.rmtree(first / "posts")  # as a finished demo's temporary folder goes away
    monkeypatch.chdir(second)
    manifest, rows, rejects = ingest(second, source="tumemo", path=Path("posts"))
    assert manifest["rows_out"] == 5, reasons(rejects)
    assert sorted(rows["image_path"]) == sorted(f"posts/{i}.jpg" for i in range(5))


def write_split_folders(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """The official FI layout: {split: {class: images}} as root/split/class/i.jpg."""
    for split, classes in counts.items():
        for label, count in classes.items():
            for index in range(count):
                write_image(root / split / label / f"{index}.jpg")
    return root


FI_LAYOUT = {"train": {"amusement": 20, "anger": 10, "awe": 7}, "val": {"amusement": 3, "anger": 2, "awe": 2}}


def test_split_folders_carve_a_seeded_stratified_test_split_from_train(tmp_path: Path) -> None:
    root = write_split_folders(tmp_path / "FI", FI_LAYOUT)
    write_image(root / "train" / "stray.jpg")  # in train/ but in no class folder
    (root / "README.txt").write_text("the dataset's notes")
    manifest, rows, rejects = ingest(tmp_path / "a", source="image_folder", path=root,
                                     layout="split_folders", test_share=0.2, split_seed=3)
    assert reasons(rejects) == {"train/stray.jpg": "no_class_folder"}
    assert (manifest["rows_in"], manifest["rows_out"]) == (45, 44)
    from_folder = rows["source_id"].str.split("/").str[0]
    assert (rows.loc[from_folder == "val", "split"] == "val").all()
    assert set(rows.loc[from_folder == "train", "split"]) == {"train", "test"}
    test = rows[rows["split"] == "test"]
    # Stratified: round(n * 0.8) of each class stays in train (16, 8, 6), the rest is test.
    carved = {"amusement": 4, "anger": 2, "awe": 1}
    assert test.groupby("label").size().to_dict() == carved
    record = manifest["summary"]["split_record"]
    assert record == {
        "layout": "split_folders", "folders": ["train", "val"], "test_carved_from": "train",
        "test_share": 0.2, "split_seed": 3, "stratified_by": "label",
        "carved_per_label": carved, "carved_rows": sum(carved.values()),
        "carved_ids_sha256": record["carved_ids_sha256"]}
    assert manifest["summary"]["splits"] == {"train": 30, "val": 7, "test": 7}

    _, again, _ = ingest(tmp_path / "b", source="image_folder", path=root,
                         layout="split_folders", test_share=0.2, split_seed=3)
    assert set(again.loc[again["split"] == "test", "source_id"]) == set(test["source_id"])
    other, reseeded, _ = ingest(tmp_path / "c", source="image_folder", path=root,
                                layout="split_folders", test_share=0.2, split_seed=4)
    assert set(reseeded.loc[reseeded["split"] == "test", "source_id"]) != set(test["source_id"])
    assert other["summary"]["split_record"]["carved_ids_sha256"] != record["carved_ids_sha256"]
    assert other["summary"]["split_record"]["carved_per_label"] == carved


def test_split_folders_with_a_test_folder_carve_nothing(tmp_path: Path) -> None:
    root = write_split_folders(tmp_path / "FI", {**FI_LAYOUT, "test": {"amusement": 2, "awe": 1}})
    manifest, rows, _ = ingest(tmp_path, source="image_folder", path=root, layout="split_folders")
    assert manifest["summary"]["split_record"] == {"layout": "split_folders",
                                                   "folders": ["test", "train", "val"]}
    assert manifest["summary"]["splits"] == {"train": 37, "val": 7, "test": 3}
    assert set(rows.loc[rows["split"] == "test", "source_id"].str.split("/").str[0]) == {"test"}


def test_split_folders_default_share_and_folder_checks(tmp_path: Path) -> None:
    root = write_split_folders(tmp_path / "FI", FI_LAYOUT)
    manifest, _, _ = ingest(tmp_path / "a", source="image_folder", path=root, layout="split_folders")
    assert manifest["summary"]["split_record"]["test_share"] == 0.1
    # A run's saved config lists every key with its value; it must validate again as it is.
    params = IngestParams(source="image_folder", path=root, layout="split_folders")
    IngestParams(**params.model_dump(mode="json", exclude_none=True))
    with pytest.raises(ValidationError, match="not class folders; set layout: split_folders"):
        ingest(tmp_path / "b", source="image_folder", path=root)
    (root / "extra").mkdir()
    with pytest.raises(ValidationError, match=r"folders other than train, val, test: \['extra'\]"):
        ingest(tmp_path / "c", source="image_folder", path=root, layout="split_folders")
    shutil.rmtree(root / "val")
    (root / "extra").rmdir()
    with pytest.raises(ValidationError, match="has no val/ folder"):
        ingest(tmp_path / "d", source="image_folder", path=root, layout="split_folders")
    with pytest.raises(ValidationError, match="is not a folder"):
        ingest(tmp_path / "e", source="image_folder", path=root / "train" / "awe" / "0.jpg")


@pytest.mark.parametrize(("values", "message"), [
    ({"source": "tumemo", "layout": "split_folders"}, "source image_folder only"),
    ({"layout": "split_folders", "split_ratios": (0.7, 0.2, 0.1)}, "split_ratios do not apply"),
    ({"layout": "split_folders", "split_dir": "."}, "split_dir do not apply"),
    ({"layout": "split_folders", "val_from_train": 0.1}, "val_from_train do not apply"),
    ({"test_share": 0.2}, "test_share applies to layout split_folders only"),
    ({"layout": "split_folders", "test_share": 1.0}, "test_share"),
])
def test_layout_params_are_validated_up_front(tmp_path: Path, values: dict[str, Any],
                                              message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IngestParams(**{"source": "image_folder", "path": tmp_path, **values})
