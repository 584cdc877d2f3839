"""Runs one stage: fingerprint, skip-if-unchanged, shard-by-shard resume, atomic outputs, manifest.

The three steps (`plan_stage`, `run_shard`, `finalize_stage`) are separate so an orchestrator can
fan shards out to workers; `run_stage` chains them in-process: it writes each shard's Parquet on a
background thread while the next shard is computed, and runs the shards of a shard-parallel stage
two at a time, as the flow's parallel shard tasks do.

A stage is built in its own folder under the run's `.work/` and moved into place only once its
manifest is written, so the previous output stays readable (and in use) until the new one is
complete. A finished stage whose files no longer match their records is repaired: its intact
files are linked into a new build, only the damaged shards are computed again, then the stage is
finalized and swapped in as usual.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import affectflow
from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.errors import UserError
from affectflow.core.hashing import external_files_fingerprinted, hash_value
from affectflow.core.integrity import (
    FileRecord,
    IntegrityError,
    damaged_files,
    describe_file,
    records_digest,
    relative_files,
)
from affectflow.core.progress import Progress
from affectflow.core.runs import RunStore, iso_utc, utc_now
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams
from affectflow.core.store import (
    MAIN_TABLE,
    MANIFEST,
    PLAN_DIR,
    REJECTS,
    REJECTS_SCHEMA,
    SHARD_WORK_DIR,
    StageArtifact,
    marker_name,
    shard_id_of,
    shard_name,
    shard_rejects_name,
    stage_file_records,
)

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
        """The stage's finished output, as readers see it."""
        return self.run.stage(self.stage.name)

    @property
    def building(self) -> StageArtifact:
        """Where the stage's next output is built before it replaces `output`."""
        return self.run.building(self.stage.name)

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
        with external_files_fingerprinted(self.settings):
            source = self.stage.source_fingerprint(self.params, self.settings)
        return hash_value({
            "stage": self.stage.name,
            "params": self.params.model_dump(mode="json"),
            "inputs": {name: art.fingerprint for name, art in self.input_artifacts().items()},
            # What the inputs hold, not only what they were asked to compute: an input repaired
            # into different bytes makes this stage stale too.
            "input_digests": {name: art.digest for name, art in self.input_artifacts().items()},
            "code": self.stage.code()["version"],
            "schema_version": self.stage.schema_version,
            "source": source,
        }), source

    def check_inputs(self) -> None:
        """Every input file matches what its stage wrote, and every column the stage declares
        it reads is in its input's recorded schema."""
        inputs = self.input_artifacts()
        for name, artifact in inputs.items():
            artifact.check_intact(f"'{self.stage.name}' reads '{name}', which must be repaired "
                                  f"first: {artifact.repair_hint()}")
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
        out = self.building.path
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
    return job.building.path / PLAN_DIR / "plan.json"


def _marker(job: StageJob, shard_id: int) -> Any:
    return job.building.path / SHARD_WORK_DIR / marker_name(shard_id)


def _shard_done(job: StageJob, shard_id: int, fingerprint: str) -> bool:
    """The shard has a marker for this fingerprint and every file it records is intact."""
    marker = _marker(job, shard_id)
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
    if record.get("fingerprint") != fingerprint:
        return False
    damaged = damaged_files(job.building.path, record.get("files", {}))
    for relative, problem in damaged.items():
        logger.warning("%s: %s: %s; computing shard %d again", job.stage.name,
                       job.building.path / relative, problem, shard_id)
    return not damaged and "files" in record


def _retired(job: StageJob) -> Any:
    return job.building.path.with_name(f".{job.stage.name}.retired")


def recover_swap(job: StageJob) -> None:
    """Finish (or undo) a swap that a crash interrupted between its two renames."""
    final, building, retired = job.output.path, job.building.path, _retired(job)
    if not final.exists():
        if (building / MANIFEST).is_file():
            os.rename(building, final)
        elif retired.exists():
            os.rename(retired, final)
    if retired.exists() and final.exists():
        shutil.rmtree(retired)


def _swap_into_place(job: StageJob) -> None:
    """Move the finished build over the previous output (which readers used until now)."""
    final, building, retired = job.output.path, job.building.path, _retired(job)
    if retired.exists():
        shutil.rmtree(retired)
    if final.exists():
        os.rename(final, retired)
    os.rename(building, final)
    if retired.exists():
        shutil.rmtree(retired)


def _damaged_shard(relative: str) -> int | None:
    """The shard a damaged file belongs to (its tables and rejects); None for what `finalize`
    writes (merged rejects, pictures, models), which the repair's finalize writes again."""
    name = relative.rsplit("/", 1)[-1]
    if name.startswith(("part-", "rejects-")) and name.endswith(".parquet"):
        return shard_id_of(name.replace("rejects-", "part-"))
    return None


def _start_repair(job: StageJob, damaged: dict[str, str]) -> None:
    """A build of the finished stage without its damaged shards: intact files are hard links
    (atomic writes replace links, so the finished output is never modified through them)."""
    final, building = job.output.path, job.building.path
    shards = {_damaged_shard(relative) for relative in damaged} - {None}
    for relative, problem in damaged.items():
        shard = _damaged_shard(relative)
        logger.warning("%s: %s: %s; %s", job.stage.name, final / relative, problem,
                       f"computing shard {shard} again" if shard is not None else
                       "writing it again")
    dropped = set(damaged) | {MANIFEST, REJECTS}
    for shard in shards:
        dropped |= {f"{SHARD_WORK_DIR}/{marker_name(shard)}",
                    f"{SHARD_WORK_DIR}/{shard_rejects_name(shard)}"}
    if building.exists():
        shutil.rmtree(building)
    for relative in relative_files(final):
        if relative in dropped or _damaged_shard(relative) in shards:
            continue
        (building / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(final / relative, building / relative)


def up_to_date(job: StageJob) -> bool:
    """The stage's finished output has the fingerprint the stage would compute now and every
    file matches its record: there is nothing to do (the plan's skip decision, without writing
    anything, so an orchestrator can answer a no-change rerun before it starts)."""
    recover_swap(job)
    out = job.output
    if not out.complete:
        return False
    try:
        job.check_inputs()
    except UserError:
        return False  # a missing or damaged input: the full path reports it
    fingerprint, _ = job.fingerprint()
    return _finished_with(out, fingerprint) and not damaged_files(out.path, out.records() or {})


def _finished_with(out: StageArtifact, fingerprint: str) -> bool:
    """The stage's output is complete and was computed with this fingerprint (the one rule for
    "nothing to do" shared by the plan and `up_to_date`; damaged files are checked by each)."""
    return out.complete and out.manifest.get("fingerprint") == fingerprint


def plan_stage(job: StageJob, force: bool = False) -> StagePlan:
    """Decide what to do: nothing (unchanged and intact), repair damaged shards, resume finished
    shards, or start over in a fresh build."""
    started_at = time.time()  # the stage's clock includes fingerprinting and `prepare`
    recover_swap(job)
    job.check_inputs()
    fingerprint, source_fingerprint = job.fingerprint()
    out = job.output
    if not force and _finished_with(out, fingerprint):
        damaged = damaged_files(out.path, out.records() or {})
        if not damaged:
            ids = out.manifest.get("shard_ids", [])
            job.run.update_stage(job.stage.name, status="skipped", fingerprint=fingerprint)
            return StagePlan(job.stage.name, fingerprint, ids, [], up_to_date=True)
        _start_repair(job, damaged)

    plan_file = _plan_file(job)
    resumable = (not force and plan_file.is_file()
                 and json.loads(plan_file.read_text()).get("fingerprint") == fingerprint)
    if resumable:
        shard_ids = json.loads(plan_file.read_text())["shard_ids"]
        (job.building.path / MANIFEST).unlink(missing_ok=True)
    else:
        if job.building.path.exists():
            shutil.rmtree(job.building.path)
        job.building.path.mkdir(parents=True)
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
    """Write the shard's tables, then its rejects, then its marker (the marker means done and
    records each file's size, rows and checksum)."""
    building = job.building
    written = [building.table_dir(name) / shard_name(shard_id) for name in output.tables]
    for path, table in zip(written, output.tables.values()):
        write_parquet(path, table)
    rejects = building.path / SHARD_WORK_DIR / shard_rejects_name(shard_id)
    write_parquet(rejects, output.rejects)
    files = {path.relative_to(building.path).as_posix(): describe_file(path)
             for path in [*written, rejects]}
    write_json(_marker(job, shard_id), {
        "fingerprint": fingerprint, "rows_in": output.rows_in, "rows_out": output.main.num_rows,
        "rows_rejected": output.rejects.num_rows, "seconds": round(seconds, 4),
        "setup_seconds": round(output.setup_seconds, 4), "files": files})


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
    building = job.building
    reject_tables = [pq.read_table(building.checked(building.path / SHARD_WORK_DIR
                                                    / shard_rejects_name(sid)))
                     for sid in shard_ids]
    rejects = pa.concat_tables(reject_tables) if reject_tables else REJECTS_SCHEMA.empty_table()
    write_parquet(building.path / REJECTS, rejects)
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
        "input_digests": {name: art.digest for name, art in ctx.inputs.items()},
        "source_fingerprint": plan["source_fingerprint"],
        "code_version": code["version"],
        "code": {"modules": code["modules"], "libraries": code["libraries"]},
        "affectflow_version": affectflow.__version__,
        "schema_version": job.stage.schema_version,
        "schema": [[field.name, str(field.type)] for field in job.stage.output_schema(job.params)],
        "side_tables": {name: [[f.name, str(f.type)] for f in building.schema(name)]
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
    manifest["files"] = _file_records(job, markers)
    manifest["digest"] = records_digest(manifest["files"])
    write_json(building.path / MANIFEST, manifest)
    _swap_into_place(job)
    job.run.update_stage(job.stage.name, status="done", fingerprint=fingerprint,
                         rows_in=rows_in, rows_out=rows_out, rows_rejected=rows_rejected,
                         seconds=round(seconds, 3), finished=utc_now())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(by_reason.items()))
    logger.info("%s: %d in = %d out + %d rejected%s", job.stage.name, rows_in, rows_out,
                rows_rejected, f" ({reasons})" if reasons else "")
    return manifest


def _file_records(job: StageJob, markers: list[dict[str, Any]]) -> dict[str, FileRecord]:
    """Records of every file of the build (its private `_plan/` and the markers aside): shard
    files keep the records their markers made, checked once more; files `finalize` wrote are
    described now."""
    building = job.building.path
    recorded: dict[str, FileRecord] = {}
    for marker in markers:
        recorded.update(marker["files"])
    damaged = damaged_files(building, recorded)
    if damaged:
        relative, problem = next(iter(damaged.items()))
        raise IntegrityError(building / relative, f"changed while the stage ran: {problem}",
                             hint="another process is writing this run's folder; rerun the stage")
    return stage_file_records(building, recorded)


def in_this_context(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` to run on a pool thread with a copy of the caller's context variables, so what
    it logs is attributed to the caller's run (an orchestrator keeps its run in them)."""
    context = contextvars.copy_context()
    return lambda *args: context.run(function, *args)


def _run_shards_in_order(job: StageJob, plan: StagePlan, progress: Progress) -> None:
    """One shard at a time (stages that hold a model), each written while the next computes."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer:
        pending_write: Future[None] | None = None
        for shard_id in plan.pending:
            start = time.perf_counter()
            output = compute_shard(job, plan.fingerprint, shard_id)
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(in_this_context(commit_shard), job, plan.fingerprint,
                                          shard_id, output, time.perf_counter() - start)
            progress.advance(1, rows=output.rows_in)
        if pending_write is not None:
            pending_write.result()


def _run_shards_overlapped(job: StageJob, plan: StagePlan, progress: Progress) -> None:
    """`SHARDS_IN_FLIGHT` shards at once; the first failure cancels the shards not yet started
    (finished ones keep their markers, so a rerun resumes after them)."""
    def one_shard(shard_id: int) -> None:
        progress.advance(1, rows=run_shard(job, plan.fingerprint, shard_id))

    with ThreadPoolExecutor(max_workers=SHARDS_IN_FLIGHT, thread_name_prefix="shard") as shards:
        futures = [shards.submit(in_this_context(one_shard), shard_id) for shard_id in plan.pending]
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
        run_shards = _run_shards_overlapped if job.stage.shard_parallel else _run_shards_in_order
        with Progress(job.stage.name, total=len(plan.pending), unit="shards") as progress:
            run_shards(job, plan, progress)
        return finalize_stage(job, plan.fingerprint)
    except Exception as error:  # Ctrl-C or a kill leaves it running: derived as interrupted
        job.run.record_failure(job.stage.name, error)
        raise
