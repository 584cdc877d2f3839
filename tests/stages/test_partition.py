"""The partition stage: threshold edge cases, every mode, streaming vs in-memory, rejects,
summary, figures and the ground-truth check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import ValidationError

from affectflow.core.errors import UserError
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from affectflow.stages.partition.stage import PARTITIONS, PartitionParams
from tests.partition_data import Settings, new_run, run_partition, sample_ids, write_artifact, write_scores


def partitioned(run: RunStore) -> pd.DataFrame:
    return run.stage("partition").read_all().to_pandas().set_index("sample_id")


def scored_run(tmp_path: Path, factual: list[float], emotional: list[float],
               shard_size: int = 2) -> RunStore:
    run = new_run(tmp_path)
    write_scores(run, sample_ids(len(factual)), factual, emotional, shard_size)
    return run


@pytest.mark.parametrize("mode, scores, sigma", [
    ("absolute", [0.25, 0.5, 0.75, 0.5], 0.5),
    ("minmax", [0.0, 0.5, 1.0, 0.5], 0.5),       # min 0, max 1: normalised == raw
    ("quantile", [0.1, 0.2, 0.3, 0.2], 0.5),     # 0.5-quantile of the four scores is 0.2
])
def test_scores_exactly_at_the_threshold_are_not_matched(tmp_path: Path, mode: str,
                                                         scores: list[float], sigma: float) -> None:
    run = scored_run(tmp_path, scores, scores)
    run_partition(run, factual_mode=mode, emotional_mode=mode, factual_sigma=sigma,
                  emotional_sigma=sigma)
    rows = partitioned(run)
    assert rows["factual_matched"].tolist() == [False, False, True, False]
    assert rows["partition"].tolist() == ["weak", "weak", "strong", "weak"]
    # The stored normalised score tells the same story: the at-sigma row's norm is the cut.
    assert (rows["factual_matched"] == (rows["factual_norm"] > rows["factual_norm"].iloc[1])).all()


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("mode", ["minmax", "quantile"])
def test_all_equal_scores_match_nothing_without_dividing_by_zero(tmp_path: Path, mode: str) -> None:
    run = scored_run(tmp_path, [0.3] * 5, [0.3] * 5)
    manifest = run_partition(run, factual_mode=mode, emotional_mode=mode,
                             factual_sigma=0.0, emotional_sigma=0.0)
    rows = partitioned(run)
    assert np.isfinite(rows["factual_norm"]).all()
    assert not rows["factual_matched"].any() and set(rows["partition"]) == {"weak"}
    assert manifest["summary"]["partitions"]["weak"]["share"] == 1.0


def test_nan_and_missing_scores_become_rejects_and_accounting_closes(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    write_artifact(run, "factual", {
        0: pa.table({"sample_id": ["a", "b", "c", "d"],
                     "factual_score": pa.array([0.1, float("nan"), 0.3, 0.4], pa.float32())}),
        1: pa.table({"sample_id": ["e", "f"],
                     "factual_score": pa.array([None, 0.2], pa.float32())})})
    write_artifact(run, "emotional", {
        0: pa.table({"sample_id": ["d", "c", "a", "x"],   # other order, "b" missing, "x" extra
                     "emotional_score": pa.array([0.5, float("inf"), 0.2, 0.9], pa.float32())}),
        1: pa.table({"sample_id": ["f", "e"],
                     "emotional_score": pa.array([0.1, 0.3], pa.float32())}),
        2: pa.table({"sample_id": ["y"], "emotional_score": pa.array([0.5], pa.float32())})})
    manifest = run_partition(run)
    rejects = run.stage("partition").rejects().to_pandas().set_index("sample_id")["reason"]
    assert rejects.to_dict() == {"b": "missing_emotional_score", "c": "nan_score",
                                 "x": "missing_factual_score", "e": "nan_score",
                                 "y": "missing_factual_score"}
    assert manifest["rejects_by_reason"] == {"missing_emotional_score": 1, "nan_score": 2,
                                             "missing_factual_score": 2}
    assert manifest["rows_in"] == 8 and manifest["rows_out"] == 3
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    rows = partitioned(run)
    assert rows.loc["d", "emotional_score"] == pytest.approx(0.5)
    assert rows.loc["a", "emotional_score"] == pytest.approx(0.2)
    assert manifest["summary"]["thresholds"]["factual"]["count"] == 3


def test_a_shard_set_with_no_valid_score_still_finishes(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [float("nan")] * 3, [0.1, 0.2, 0.3])
    manifest = run_partition(run)
    assert (manifest["rows_out"], manifest["rejects_by_reason"]) == (0, {"nan_score": 3})
    assert manifest["summary"]["thresholds"]["factual"]["threshold_raw"] is None
    assert all(p["count"] == 0 for p in manifest["summary"]["partitions"].values())
    assert all((run.stage("partition").path / f).is_file() for f in manifest["summary"]["figures"])


def reference_partition(factual: np.ndarray, emotional: np.ndarray, mode: str,
                        sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The definition, computed in memory over the whole column with numpy."""
    def matched(values: np.ndarray) -> np.ndarray:
        if mode == "absolute":
            return values > sigma
        if mode == "minmax":
            return (values - values.min()) / (values.max() - values.min()) > sigma
        return values > np.quantile(values, sigma, method="inverted_cdf")

    return matched(factual.astype(np.float64)), matched(emotional.astype(np.float64))


@pytest.mark.parametrize("mode, sigma", [("absolute", 0.27), ("minmax", 0.6), ("quantile", 0.5),
                                         ("quantile", 0.78)])
def test_streaming_over_shards_equals_in_memory_computation(tmp_path: Path, mode: str,
                                                            sigma: float) -> None:
    rng = np.random.default_rng(3)
    count = 2000
    factual = rng.normal(0.25, 0.05, count).astype(np.float32)
    emotional = (0.3 * factual + rng.normal(0.2, 0.08, count)).astype(np.float32)
    ids = sample_ids(count)
    params = dict(factual_mode=mode, emotional_mode=mode, factual_sigma=sigma,
                  emotional_sigma=sigma)
    runs = {}
    for shard_size in (97, count):
        run = new_run(tmp_path / str(shard_size))
        write_scores(run, ids, factual, emotional, shard_size)
        run_partition(run, **params)
        runs[shard_size] = partitioned(run).loc[ids]
    streamed, single = runs[97], runs[count]
    pd.testing.assert_frame_equal(streamed, single)
    expected_f, expected_e = reference_partition(factual, emotional, mode, sigma)
    assert np.array_equal(streamed["factual_matched"].to_numpy(), expected_f)
    assert np.array_equal(streamed["emotional_matched"].to_numpy(), expected_e)
    names = np.select([expected_f & expected_e, expected_e, expected_f],
                      ["strong", "partial_emotional", "partial_factual"], "weak")
    assert streamed["partition"].tolist() == names.tolist()


def test_summary_counts_shares_and_paper_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    factual, emotional = rng.normal(size=1000), rng.normal(size=1000)
    run = scored_run(tmp_path, factual.tolist(), emotional.tolist(), shard_size=128)
    summary = run_partition(run)["summary"]
    rows = partitioned(run)
    counts = rows["partition"].value_counts().to_dict()
    for name in PARTITIONS:
        assert summary["partitions"][name]["count"] == counts.get(name, 0)
        assert summary["partitions"][name]["share"] == pytest.approx(counts.get(name, 0) / 1000)
    assert sum(p["share"] for p in summary["partitions"].values()) == pytest.approx(1.0)
    assert summary["partial"]["count"] == counts["partial_emotional"] + counts["partial_factual"]
    # Default quantile 0.5 on both scores: exactly half matched per score, ~1/4 per partition.
    assert rows["factual_matched"].sum() == rows["emotional_matched"].sum() == 500
    assert all(0.2 < summary["partitions"][name]["share"] < 0.3 for name in PARTITIONS)
    assert summary["paper"] == {"sigma": 0.7, "strong": 0.22, "partial": 0.51, "weak": 0.27}
    assert summary["thresholds"]["factual"]["threshold_raw"] == pytest.approx(
        np.quantile(factual.astype(np.float32), 0.5, method="inverted_cdf"))
    on_disk = json.loads((run.stage("partition").path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))


def test_figures_are_valid_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    run = scored_run(tmp_path, rng.normal(0.25, 0.05, 300).tolist(),
                     rng.normal(0.3, 0.1, 300).tolist(), shard_size=100)
    summary = run_partition(run, factual_mode="absolute", factual_sigma=0.7)["summary"]
    assert len(summary["figures"]) == 3
    for name in summary["figures"]:
        path = run.stage("partition").path / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.width > 300 and image.height > 200


def write_truth(path: Path, rows: list[tuple[str, bool, bool]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_id", "kind", "factual_match", "emotional_match"])
        for source_id, factual, emotional in rows:
            writer.writerow([source_id, "planted", factual, emotional])
    return path


def test_ground_truth_precision_and_recall(tmp_path: Path) -> None:
    # Absolute sigma 0.5: a score of 0.9 is matched, 0.1 is not.
    hi, lo = 0.9, 0.1
    factual = [hi, hi, lo, lo, hi, lo, hi, lo, hi]
    emotional = [hi, lo, hi, lo, hi, hi, lo, lo, hi]
    truth = [  # (factual_match, emotional_match) as planted
        (True, True), (False, False), (False, True), (False, False), (True, True),
        (True, True), (True, True), (False, True)]       # p8 has no ground-truth row
    ids = sample_ids(9)
    run = scored_run(tmp_path, factual, emotional, shard_size=4)
    write_artifact(run, "ingest", {
        i: pa.table({"sample_id": ids[i * 4:i * 4 + 4],
                     "source_id": [f"p{n}" for n in range(i * 4, min(9, i * 4 + 4))]})
        for i in range(3)})
    truth_file = write_truth(tmp_path / "truth.csv",
                             [(f"p{n}", f, e) for n, (f, e) in enumerate(truth)])
    report = run_partition(run, factual_mode="absolute", emotional_mode="absolute",
                           ground_truth=truth_file)["summary"]["ground_truth"]
    # Factual mismatches flagged: p2 p3 p5 p7; planted: p1 p2 p3 p7 -> 3 right of 4 and 4.
    assert report["factual_mismatch"] == {"precision": 0.75, "recall": 0.75, "planted": 4,
                                          "flagged": 4, "true_positive": 3}
    # Emotional mismatches flagged: p1 p3 p6 p7; planted: p1 p3 -> precision 2/4, recall 1.
    assert report["emotional_mismatch"] == {"precision": 0.5, "recall": 1.0, "planted": 2,
                                            "flagged": 4, "true_positive": 2}
    # Same partition as planted: p0 p2 p3 p4 -> 4 of 8 labelled.
    assert report["partition_accuracy"] == 0.5
    assert (report["labelled_samples"], report["unlabelled_samples"]) == (8, 1)


def test_changing_the_ground_truth_file_reruns_the_stage(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [0.1, 0.9], [0.9, 0.1])
    write_artifact(run, "ingest", {0: pa.table({"sample_id": sample_ids(2),
                                                "source_id": ["p0", "p1"]})})
    truth = write_truth(tmp_path / "truth.csv", [("p0", True, True), ("p1", True, True)])
    first = run_partition(run, ground_truth=truth)["fingerprint"]
    assert run_partition(run, ground_truth=truth)["fingerprint"] == first
    write_truth(truth, [("p0", False, True), ("p1", True, False)])
    second = run_partition(run, ground_truth=truth)
    assert second["fingerprint"] != first
    assert second["summary"]["ground_truth"]["partition_accuracy"] == 1.0


@pytest.mark.parametrize("params, message", [
    ({"factual_mode": "quantile", "factual_sigma": 1.5}, "factual_sigma 1.5 is outside"),
    ({"emotional_mode": "minmax", "emotional_sigma": -0.1}, "emotional_sigma -0.1 is outside"),
    ({"factual_mode": "relative"}, "factual_mode"),
    ({"ground_truth": "/nonexistent/truth.csv"}, "ground truth file does not exist"),
    ({"sigma": 0.7}, "sigma"),
])
def test_bad_params_fail_before_any_work(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PartitionParams(**params)


def test_absolute_mode_accepts_negative_sigma() -> None:
    assert PartitionParams(factual_mode="absolute", factual_sigma=-0.2).factual_sigma == -0.2


def test_ground_truth_without_ingest_fails_before_any_work(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [0.1, 0.9], [0.9, 0.1])
    truth = write_truth(tmp_path / "truth.csv", [("p0", True, True)])
    with pytest.raises(UserError, match="needs the ingest stage's source ids"):
        run_partition(run, ground_truth=truth)
    assert not list(run.stage("partition").path.glob("part-*.parquet"))


def test_ground_truth_of_the_demo_data_through_real_ingest(tmp_path: Path, demo_dir: Path) -> None:
    """Demo posts ingested for real; scores that separate the planted mismatches perfectly must
    give precision and recall 1 once sample ids are mapped back to source ids."""
    run = new_run(tmp_path)
    run_stage(StageJob(run, IngestStage(), IngestParams(source="tumemo", path=demo_dir / "tumemo",
                                                        shard_size=16), Settings()))
    truth = pd.read_csv(demo_dir / "ground_truth.csv", dtype={"source_id": str})
    truth = truth.set_index("source_id")
    shards = {}
    for shard_id, posts in run.stage("ingest").iter_shards(columns=["sample_id", "source_id"]):
        labels = truth.loc[posts["source_id"].to_pylist()]
        shards[shard_id] = posts.append_column(
            "factual_score", pa.array(np.where(labels["factual_match"], 0.3, 0.1), pa.float32())
        ).append_column(
            "emotional_score", pa.array(np.where(labels["emotional_match"], 0.6, 0.2), pa.float32()))
    for name in ("factual", "emotional"):
        write_artifact(run, name, {sid: t.select(["sample_id", f"{name}_score"])
                                   for sid, t in shards.items()})
    report = run_partition(run, factual_mode="absolute", factual_sigma=0.2,
                           emotional_mode="absolute", emotional_sigma=0.4,
                           ground_truth=demo_dir / "ground_truth.csv")["summary"]["ground_truth"]
    assert report["labelled_samples"] == run.stage("ingest").num_rows()
    assert report["unlabelled_samples"] == 0
    for kind in ("factual_mismatch", "emotional_mismatch"):
        assert report[kind]["precision"] == report[kind]["recall"] == 1.0
        assert report[kind]["planted"] > 0
    assert report["partition_accuracy"] == 1.0
