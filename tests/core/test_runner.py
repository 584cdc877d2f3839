"""Runner behaviour on two toy stages: skip, rerun, downstream invalidation, resume, accounting."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from affectflow.core.errors import UserError
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams
from affectflow.core.store import MAIN_TABLE, make_rejects

CALLS: list[tuple[str, int]] = []


@dataclass(frozen=True)
class Settings:
    workers: int = 1


class NumbersParams(StageParams):
    shards: int = 3
    rows_per_shard: int = 5
    fail_on_shard: int = -1


class NumbersStage(Stage):
    """Source stage: shard i holds rows i*n..i*n+n-1; multiples of 4 are rejected."""

    name = "numbers"
    Params = NumbersParams
    schema = pa.schema([("sample_id", pa.string()), ("value", pa.int64())])

    def prepare(self, ctx: StageContext) -> list[int]:
        return list(range(ctx.params.shards))

    def process(self, ctx: StageContext, state: Any, shard_id: int) -> ShardOutput:
        CALLS.append((self.name, shard_id))
        if shard_id == ctx.params.fail_on_shard:
            raise RuntimeError("injected failure")
        n = ctx.params.rows_per_shard
        values = range(shard_id * n, shard_id * n + n)
        kept = [{"sample_id": str(v), "value": v} for v in values if v % 4]
        rejected = [{"sample_id": str(v), "reason": "multiple_of_four"} for v in values if not v % 4]
        return ShardOutput(rows_in=n, tables={MAIN_TABLE: pa.Table.from_pylist(kept, schema=self.schema)},
                           rejects=make_rejects(rejected))


class ScaleParams(StageParams):
    factor: int = 2


class ScaleStage(Stage):
    name = "scaled"
    inputs = ("numbers",)
    Params = ScaleParams
    schema = pa.schema([("sample_id", pa.string()), ("scaled", pa.int64())])

    def process(self, ctx: StageContext, state: Any, shard_id: int) -> ShardOutput:
        CALLS.append((self.name, shard_id))
        table = ctx.input("numbers").read_shard(shard_id)
        scaled = pa.table({"sample_id": table["sample_id"],
                           "scaled": pa.array([v * ctx.params.factor for v in table["value"].to_pylist()])})
        return ShardOutput(rows_in=table.num_rows, tables={MAIN_TABLE: scaled})


class LeakyStage(NumbersStage):
    """Drops a row without rejecting it: the runner must refuse."""

    name = "leaky"

    def process(self, ctx: StageContext, state: Any, shard_id: int) -> ShardOutput:
        output = super().process(ctx, state, shard_id)
        return ShardOutput(rows_in=output.rows_in, tables={MAIN_TABLE: output.main.slice(1)},
                           rejects=output.rejects)


class OverlappedStage(NumbersStage):
    """Shard-parallel: each shard waits at a two-party barrier, which only opens when the runner
    computes two shards at once (a runner that went shard by shard would time out there)."""

    name = "overlapped"
    shard_parallel = True

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)

    def process(self, ctx: StageContext, state: Any, shard_id: int) -> ShardOutput:
        if shard_id < 2:
            self.barrier.wait()
        return super().process(ctx, state, shard_id)


def heal(stage: NumbersStage, params: NumbersParams) -> None:
    """The injected fault is gone: the stage computes with `params` while the job keeps the
    failing params, so its fingerprint (and the finished shards it can reuse) stays the same."""
    original = stage.process

    def healed(ctx: StageContext, state: Any, shard_id: int) -> ShardOutput:
        ctx.params = params
        return original(ctx, state, shard_id)

    stage.process = healed  # type: ignore[method-assign]


def job(store: RunStore, stage: Stage, **params: Any) -> StageJob:
    return StageJob(run=store, stage=stage, params=stage.Params(**params), settings=Settings())


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    CALLS.clear()
    run = RunStore(tmp_path, "run")
    run.create({}, {})
    return run


def test_stage_writes_shards_rejects_and_a_closing_manifest(store: RunStore) -> None:
    manifest = run_stage(job(store, NumbersStage()))
    assert manifest["rows_in"] == 15
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    assert manifest["rejects_by_reason"] == {"multiple_of_four": 4}
    artifact = store.stage("numbers")
    assert artifact.shard_ids() == [0, 1, 2]
    assert artifact.rejects().num_rows == 4
    assert set(artifact.rejects().column_names) >= {"sample_id", "reason", "detail"}
    assert store.read()["stages"]["numbers"]["status"] == "done"


def test_unchanged_stage_is_skipped_and_force_recomputes(store: RunStore) -> None:
    run_stage(job(store, NumbersStage()))
    CALLS.clear()
    run_stage(job(store, NumbersStage()))
    assert CALLS == []
    assert store.read()["stages"]["numbers"]["status"] == "skipped"
    run_stage(job(store, NumbersStage()), force=True)
    assert len(CALLS) == 3


def test_param_change_reruns_stage_and_downstream_but_not_upstream(store: RunStore) -> None:
    run_stage(job(store, NumbersStage()))
    run_stage(job(store, ScaleStage()))
    CALLS.clear()
    run_stage(job(store, NumbersStage()))
    run_stage(job(store, ScaleStage(), factor=3))
    assert [c for c in CALLS if c[0] == "numbers"] == []
    assert len([c for c in CALLS if c[0] == "scaled"]) == 3
    assert store.stage("scaled").read_all()["scaled"].to_pylist()[0] == 3

    CALLS.clear()
    old = store.stage("scaled").manifest["inputs"]["numbers"]
    run_stage(job(store, NumbersStage(), rows_per_shard=6))
    run_stage(job(store, ScaleStage(), factor=3))
    assert store.stage("scaled").manifest["inputs"]["numbers"] != old
    assert {c[0] for c in CALLS} == {"numbers", "scaled"}


def test_interrupted_stage_resumes_reusing_finished_shards(store: RunStore) -> None:
    with pytest.raises(RuntimeError, match="injected"):
        run_stage(job(store, NumbersStage(), fail_on_shard=2))
    assert not store.stage("numbers").complete
    assert store.read()["stages"]["numbers"]["status"] == "failed"
    assert CALLS == [("numbers", 0), ("numbers", 1), ("numbers", 2)]
    # Same fingerprint once the fault is gone: finished shards 0 and 1 are reused.
    CALLS.clear()
    stage = NumbersStage()
    failing = job(store, stage, fail_on_shard=2)
    fixed = StageJob(run=store, stage=stage, params=failing.params, settings=Settings())
    heal(stage, NumbersParams())
    manifest = run_stage(fixed)
    assert CALLS == [("numbers", 2)]
    assert manifest["rows_in"] == 15 and manifest["rows_out"] == 11


def test_accounting_that_does_not_close_fails_the_stage(store: RunStore) -> None:
    with pytest.raises(RuntimeError, match="accounting does not close"):
        run_stage(job(store, LeakyStage()))
    assert not store.stage("leaky").complete


def test_missing_upstream_is_a_clear_user_error(store: RunStore) -> None:
    with pytest.raises(UserError, match="needs 'numbers'"):
        run_stage(job(store, ScaleStage()))


def test_shard_parallel_stage_computes_two_shards_at_once(store: RunStore) -> None:
    manifest = run_stage(job(store, OverlappedStage(), shards=5))
    assert sorted(CALLS) == [("overlapped", shard) for shard in range(5)]
    assert manifest["rows_in"] == 25 and manifest["rows_in"] == manifest["rows_out"] + manifest["rows_rejected"]
    assert store.stage("overlapped").shard_ids() == [0, 1, 2, 3, 4]


def test_shard_parallel_failure_fails_the_stage_and_a_rerun_resumes(store: RunStore) -> None:
    with pytest.raises(RuntimeError, match="injected"):
        run_stage(job(store, OverlappedStage(), shards=6, fail_on_shard=3))
    assert store.read()["stages"]["overlapped"]["status"] == "failed"
    assert not store.stage("overlapped").complete
    attempted = {shard for _, shard in CALLS}
    assert {0, 1, 2, 3} <= attempted
    CALLS.clear()
    stage = OverlappedStage()
    heal(stage, NumbersParams(shards=6))
    failing = job(store, stage, shards=6, fail_on_shard=3)
    manifest = run_stage(failing)
    # Shards that finished before the failure are reused; the failed one and any that had not
    # started are computed now.
    assert 3 in {shard for _, shard in CALLS}
    assert not {0, 1} & {shard for _, shard in CALLS}
    assert manifest["rows_in"] == 30


def test_stage_that_is_not_shard_parallel_runs_shards_in_order(store: RunStore) -> None:
    run_stage(job(store, NumbersStage(), shards=6))
    assert CALLS == [("numbers", shard) for shard in range(6)]
