"""Atomic writes, artifact reading, run bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from affectflow.core.atomic import atomic_path, write_json, write_parquet
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_value, stable_sample_id, tree_fingerprint
from affectflow.core.runs import RunStore, list_runs, validate_run_id
from affectflow.core.store import StageArtifact


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "out" / "part-00000.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_the_target_whole(tmp_path: Path) -> None:
    target = tmp_path / "value.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["value.json"]


def test_hashes_are_order_independent_for_mappings_and_stable() -> None:
    assert hash_value({"a": 1, "b": [1, 2]}) == hash_value({"b": [1, 2], "a": 1})
    assert hash_value({"a": 1}) != hash_value({"a": 2})
    assert stable_sample_id("ds", "42") == stable_sample_id("ds", "42")
    assert len(stable_sample_id("ds", "42")) == 32
    assert stable_sample_id("ds", "42") != stable_sample_id("other", "42")


def test_tree_fingerprint_sees_every_change_below_the_root_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.txt").write_text("one")
    (root / "y.txt").write_text("two")
    (tmp_path / "elsewhere").mkdir()
    (root / "linked").symlink_to(tmp_path / "elsewhere")     # folders behind links are not read
    (root / "dangling").symlink_to(tmp_path / "missing")     # counted as itself, no crash
    first = tree_fingerprint(root)
    assert tree_fingerprint(root) == first
    (tmp_path / "elsewhere" / "ignored.txt").write_text("outside")
    assert tree_fingerprint(root) == first
    (root / "a" / "b" / "x.txt").write_text("one!")
    changed = tree_fingerprint(root)
    assert changed != first
    (root / "a" / "new.txt").write_text("")
    added = tree_fingerprint(root)
    assert added != changed
    (root / "a" / "new.txt").unlink()
    assert tree_fingerprint(root) == changed
    assert tree_fingerprint(root / "y.txt") != tree_fingerprint(root / "a" / "b" / "x.txt")


def test_stage_artifact_reads_shards_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    for shard_id in (1, 0):
        write_parquet(folder / f"part-{shard_id:05d}.parquet", pa.table({"x": [shard_id] * 2}))
    artifact = StageArtifact(folder)
    assert artifact.shard_ids() == [0, 1]
    assert artifact.read_all()["x"].to_pylist() == [0, 0, 1, 1]
    assert artifact.num_rows() == 4
    assert not artifact.complete
    with pytest.raises(UserError, match="no finished artifact"):
        _ = artifact.manifest


def test_run_store_records_stages_and_lists_runs(tmp_path: Path) -> None:
    store = RunStore(tmp_path, "r1")
    store.create({"run": {}}, {"affectflow": "0"})
    store.update_stage("ingest", status="done", rows_out=3)
    store.update_stage("ingest", seconds=1.5)
    record = store.read()
    assert record["stages"]["ingest"] == {"status": "done", "rows_out": 3, "seconds": 1.5}
    assert [r["run_id"] for r in list_runs(tmp_path)] == ["r1"]
    with pytest.raises(UserError):
        RunStore(tmp_path, "missing").read()


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 101, "-lead"])
def test_run_ids_are_validated(bad: str) -> None:
    with pytest.raises(UserError, match="invalid run id"):
        validate_run_id(bad)
