"""Runs one stage: fingerprint, skip-if-unchanged, shard-by-shard resume, atomic outputs, manifest.

The three steps (`plan_stage`, `run_shard`, `finalize_stage`) are separate so an orchestrator can
fan shards out to workers; `run_stage` chains them in-process: it writes each shard's Parquet on a
background thread while the next shard is computed, and runs the shards of a shard-parallel stage
two at a time, as the flow's parallel shard tasks do.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import affectflow
from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_value
from affectflow.core.progress import Progress
from affectflow.core.runs import RunStore, iso_utc, utc_now
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams
from affectflow.core.store import MAIN_TABLE, MANIFEST, PLAN_DIR, REJECTS, REJECTS_SCHEMA, SHARD_WORK_DIR, StageArtifact

logger = logging.getLogger(__name__)

# Shards of a shard-parallel stage that `run_stage` works on at once: while one shard's results
# are gathered and written, the next one's work already keeps the stage's workers (ingest's decode
# processes) busy, so they do not wait at every shard boundary.
SHARDS_IN_FLIGHT = 2

_STATE_CACHE: dict[tuple[str, str], Any] = {}
_STATE_LOCK = threading.Lock()


@dataclass
class StageJob:
    """A stage bound to a run, its params and the run-wide settings."""

    run: RunStore
    stage: Stage[Any]
    params: StageParams
    settings: Any

    @property
    def output(self) -> StageArtifact:
        return self.run.stage(self.stage.name)

    def input_artifacts(self) -> dict[str, StageArtifact]:
        artifacts = {}
        for name in self.stage.input_names(self.params):
            artifact = self.run.stage(name)
            if not artifact.complete:
                raise UserError(f"stage '{self.stage.name}' needs '{name}', which has not finished "
                                f"in run '{self.run.run_id}'",
                                hint=f"run it first: affectflow stage {name} --run {self.run.run_id}")
            artifacts[name] = artifact
        return artifacts

    def fingerprint(self) -> tuple[str, str | None]:
        """hash(stage name, params, input fingerprints, code version, external source), and the
        external source's own fingerprint (computed once: it may stat a whole dataset)."""
        source = self.stage.source_fingerprint(self.params, self.settings)
        return hash_value({
            "stage": self.stage.name,
            "params": self.params.model_dump(mode="json"),
            "inputs": {name: art.fingerprint for name, art in self.input_artifacts().items()},
            "code": self.stage.code()["version"],
            "schema_version": self.stage.schema_version,
            "source": source,
        }), source

    def check_reads(self) -> None:
        """Every column the stage declares it reads is in its input's recorded schema."""
        inputs = self.input_artifacts()
        for ref in self.stage.reads:
            if ref.stage not in inputs:
                continue
            manifest = inputs[ref.stage].manifest
            recorded = (manifest["schema"] if ref.table == MAIN_TABLE
                        else manifest.get("side_tables", {}).get(ref.table, []))
            missing = sorted(set(ref.columns) - {name for name, _ in recorded})
            if missing:
                raise UserError(f"stage '{self.stage.name}' reads {missing} from the '{ref.table}' "
                                f"table of '{ref.stage}', which has no such columns",
                                hint=f"rerun '{ref.stage}' with this version of affectflow: "
                                     f"affectflow stage {ref.stage} --run {self.run.run_id} --force")

    def context(self, fingerprint: str) -> StageContext[Any]:
        out = self.output.path
        return StageContext(stage_name=self.stage.name, params=self.params,
                            inputs=self.input_artifacts(), output_dir=out,
                            work_dir=out / PLAN_DIR, run_dir=self.run.path,
                            settings=self.settings, fingerprint=fingerprint)


@dataclass
class StagePlan:
    stage: str
    fingerprint: str
    shard_ids: list[int]
    pending: list[int]
    up_to_date: bool


def _plan_file(job: StageJob) -> Any:
    return job.output.path / PLAN_DIR / "plan.json"


def _marker(job: StageJob, shard_id: int) -> Any:
    return job.output.path / SHARD_WORK_DIR / f"{shard_id:05d}.json"


def _shard_done(job: StageJob, shard_id: int, fingerprint: str) -> bool:
    marker = _marker(job, shard_id)
    return marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint


def plan_stage(job: StageJob, force: bool = False) -> StagePlan:
    """Decide what to do: nothing (fingerprint unchanged), resume finished shards, or start over."""
    started_at = time.time()  # the stage's clock includes fingerprinting and `prepare`
    job.check_reads()
    fingerprint, source_fingerprint = job.fingerprint()
    out = job.output
    if not force and out.complete and out.manifest.get("fingerprint") == fingerprint:
        ids = out.manifest.get("shard_ids", [])
        job.run.update_stage(job.stage.name, status="skipped", fingerprint=fingerprint)
        return StagePlan(job.stage.name, fingerprint, ids, [], up_to_date=True)

    plan_file = _plan_file(job)
    resumable = (not force and plan_file.is_file()
                 and json.loads(plan_file.read_text()).get("fingerprint") == fingerprint)
    if resumable:
        shard_ids = json.loads(plan_file.read_text())["shard_ids"]
        (out.path / MANIFEST).unlink(missing_ok=True)
    else:
        if out.path.exists():
            shutil.rmtree(out.path)
        out.path.mkdir(parents=True)
        shard_ids = list(job.stage.prepare(job.context(fingerprint)))
        write_json(plan_file, {"fingerprint": fingerprint, "shard_ids": shard_ids,
                               "source_fingerprint": source_fingerprint,
                               "started": iso_utc(started_at), "started_at": started_at})
    pending = [sid for sid in shard_ids if not _shard_done(job, sid, fingerprint)]
    if resumable and len(pending) < len(shard_ids):
        logger.info("%s: resuming, %d of %d shards already finished",
                    job.stage.name, len(shard_ids) - len(pending), len(shard_ids))
    job.run.update_stage(job.stage.name, status="running", fingerprint=fingerprint,
                         started=utc_now())
    return StagePlan(job.stage.name, fingerprint, shard_ids, pending, up_to_date=False)


def _stage_state(job: StageJob, ctx: StageContext[Any]) -> tuple[Any, float]:
    """Load models etc. once per process and fingerprint, shared by all shards it processes;
    also return the seconds this call spent in `setup` (0 when the state was cached)."""
    key = (str(job.output.path), ctx.fingerprint)
    with _STATE_LOCK:
        if key in _STATE_CACHE:
            return _STATE_CACHE[key], 0.0
        for stale in [k for k in _STATE_CACHE if k[0] == key[0]]:
            del _STATE_CACHE[stale]
        start = time.perf_counter()
        _STATE_CACHE[key] = job.stage.setup(ctx)
        return _STATE_CACHE[key], time.perf_counter() - start


def compute_shard(job: StageJob, fingerprint: str, shard_id: int) -> ShardOutput:
    """Run the stage's work on one shard and check its accounting and declared schemas."""
    ctx = job.context(fingerprint)
    state, setup_seconds = _stage_state(job, ctx)
    output = job.stage.process(ctx, state, shard_id)
    output.setup_seconds = setup_seconds
    kept, rejected = output.main.num_rows, output.rejects.num_rows
    if output.rows_in != kept + rejected:
        raise RuntimeError(f"{job.stage.name} shard {shard_id}: accounting does not close: "
                           f"{output.rows_in} in != {kept} out + {rejected} rejected")
    schemas = {MAIN_TABLE: job.stage.output_schema(job.params), **job.stage.side_schemas}
    for table_name, table in output.tables.items():
        if table_name not in schemas:
            raise RuntimeError(f"{job.stage.name} produced undeclared table '{table_name}'")
        selected = table.select(schemas[table_name].names)
        # Side tables hold vectors whose width depends on the model: their declared schema fixes
        # the columns, the writer keeps the actual (fixed-size list) types.
        output.tables[table_name] = (selected.cast(schemas[table_name])
                                     if table_name == MAIN_TABLE else selected)
    output.rejects = output.rejects.select(REJECTS_SCHEMA.names).cast(REJECTS_SCHEMA)
    return output


def commit_shard(job: StageJob, fingerprint: str, shard_id: int, output: ShardOutput,
                 seconds: float) -> None:
    """Write the shard's tables, then its rejects, then its marker (the marker means done)."""
    for table_name, table in output.tables.items():
        write_parquet(job.output.shard_path(shard_id, table_name), table)
    work = job.output.path / SHARD_WORK_DIR
    write_parquet(work / f"rejects-{shard_id:05d}.parquet", output.rejects)
    write_json(_marker(job, shard_id), {
        "fingerprint": fingerprint, "rows_in": output.rows_in, "rows_out": output.main.num_rows,
        "rows_rejected": output.rejects.num_rows, "seconds": round(seconds, 4),
        "setup_seconds": round(output.setup_seconds, 4)})


def run_shard(job: StageJob, fingerprint: str, shard_id: int) -> int:
    """Compute and write one shard; returns the input rows it consumed."""
    start = time.perf_counter()
    output = compute_shard(job, fingerprint, shard_id)
    commit_shard(job, fingerprint, shard_id, output, time.perf_counter() - start)
    return output.rows_in


def finalize_stage(job: StageJob, fingerprint: str) -> dict[str, Any]:
    """Merge rejects, check the totals, let the stage summarise, and write the manifest last."""
    plan = json.loads(_plan_file(job).read_text())
    shard_ids: list[int] = plan["shard_ids"]
    missing = [sid for sid in shard_ids if not _shard_done(job, sid, fingerprint)]
    if missing:
        raise RuntimeError(f"{job.stage.name}: shards {missing[:10]} are not finished")
    markers = [json.loads(_marker(job, sid).read_text()) for sid in shard_ids]
    rows_in = sum(m["rows_in"] for m in markers)
    rows_out = sum(m["rows_out"] for m in markers)
    rows_rejected = sum(m["rows_rejected"] for m in markers)
    if rows_in != rows_out + rows_rejected:
        raise RuntimeError(f"{job.stage.name}: accounting does not close")
    work = job.output.path / SHARD_WORK_DIR
    reject_tables = [pq.read_table(work / f"rejects-{sid:05d}.parquet") for sid in shard_ids]
    rejects = pa.concat_tables(reject_tables) if reject_tables else REJECTS_SCHEMA.empty_table()
    write_parquet(job.output.path / REJECTS, rejects)
    by_reason = {str(row["values"]): int(row["counts"])
                 for row in pc.value_counts(rejects["reason"]).to_pylist()} if rejects.num_rows else {}

    ctx = job.context(fingerprint)
    extra = job.stage.finalize(ctx)
    code = job.stage.code()
    finished = time.time()
    seconds = finished - float(plan["started_at"])
    manifest = {
        "stage": job.stage.name,
        "params": job.params.model_dump(mode="json"),
        "fingerprint": fingerprint,
        "inputs": {name: art.fingerprint for name, art in ctx.inputs.items()},
        "source_fingerprint": plan["source_fingerprint"],
        "code_version": code["version"],
        "code": {"modules": code["modules"], "libraries": code["libraries"]},
        "affectflow_version": affectflow.__version__,
        "schema_version": job.stage.schema_version,
        "schema": [[field.name, str(field.type)] for field in job.stage.output_schema(job.params)],
        "side_tables": {name: [[f.name, str(f.type)] for f in job.output.schema(name)]
                        for name in sorted(job.stage.side_schemas)},
        "shard_ids": shard_ids,
        "rows_in": rows_in, "rows_out": rows_out, "rows_rejected": rows_rejected,
        "rejects_by_reason": by_reason,
        "timings": {"started": plan["started"], "finished": utc_now(),
                    "started_at": float(plan["started_at"]), "finished_at": finished,
                    "seconds": round(seconds, 3),
                    "shard_seconds": round(sum(m["seconds"] for m in markers), 3),
                    # model loading etc., once per worker process (inside shard_seconds)
                    "setup_seconds": round(sum(m.get("setup_seconds", 0.0) for m in markers), 3)},
        "summary": extra,
    }
    write_json(job.output.path / MANIFEST, manifest)
    job.run.update_stage(job.stage.name, status="done", fingerprint=fingerprint,
                         rows_in=rows_in, rows_out=rows_out, rows_rejected=rows_rejected,
                         seconds=round(seconds, 3), finished=utc_now())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(by_reason.items()))
    logger.info("%s: %d in = %d out + %d rejected%s", job.stage.name, rows_in, rows_out,
                rows_rejected, f" ({reasons})" if reasons else "")
    return manifest


def _run_shards_in_order(job: StageJob, plan: StagePlan, progress: Progress) -> None:
    """One shard at a time (stages that hold a model), each written while the next computes."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer:
        pending_write: Future[None] | None = None
        for shard_id in plan.pending:
            start = time.perf_counter()
            output = compute_shard(job, plan.fingerprint, shard_id)
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(commit_shard, job, plan.fingerprint, shard_id,
                                          output, time.perf_counter() - start)
            progress.advance(1, rows=output.rows_in)
        if pending_write is not None:
            pending_write.result()


def _run_shards_overlapped(job: StageJob, plan: StagePlan, progress: Progress) -> None:
    """`SHARDS_IN_FLIGHT` shards at once; the first failure cancels the shards not yet started
    (finished ones keep their markers, so a rerun resumes after them)."""
    def one_shard(shard_id: int) -> None:
        progress.advance(1, rows=run_shard(job, plan.fingerprint, shard_id))

    with ThreadPoolExecutor(max_workers=SHARDS_IN_FLIGHT, thread_name_prefix="shard") as shards:
        futures = [shards.submit(one_shard, shard_id) for shard_id in plan.pending]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def run_stage(job: StageJob, force: bool = False) -> dict[str, Any]:
    """Plan, process pending shards (overlapped for shard-parallel stages), finalize."""
    plan = plan_stage(job, force=force)
    if plan.up_to_date:
        logger.info("%s: up to date (fingerprint %s), skipped", job.stage.name, plan.fingerprint[:12])
        return job.output.manifest
    try:
        progress = Progress(job.stage.name, total=len(plan.pending), unit="shards")
        run_shards = _run_shards_overlapped if job.stage.shard_parallel else _run_shards_in_order
        run_shards(job, plan, progress)
        progress.close()
        return finalize_stage(job, plan.fingerprint)
    except BaseException as error:
        job.run.update_stage(job.stage.name, status="failed", error=str(error)[:500],
                             finished=utc_now())
        raise
