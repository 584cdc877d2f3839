"""Prefect flows: `pretrain` and `cternet` (a run's configured stage chain), `rerun-stage`.

Each run's stages execute in the `stage-chain` subflow on the task runner its config names
(threads, Dask or Ray), so deployments and the CLI get the same choice.

Tasks receive a `RunRef` (artifact root + run id) and stage names, never data: each task
re-reads the run's saved config and opens the artifacts it needs. Caching is the artifact
store's job (fingerprints), so Prefect's result caching and persistence are off.

In the Prefect UI a flow run is named after the affectflow run id (`demo1`, `demo1 · stages`,
`demo1 · rerun partition`), a task after its stage; every flow and task forwards the project's
log lines to its run log, and a stage that ran posts its artifacts (pipelines/publish.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import UpstreamTaskError
from prefect.futures import PrefectFuture, wait

from affectflow.core.errors import UserError
from affectflow.core.progress import set_stage_order
from affectflow.core.runner import StageJob, finalize_stage, plan_stage, run_shard, run_stage
from affectflow.pipelines.config import config_snapshot, load_config, stage_params
from affectflow.pipelines.execution import RunRef, make_job, open_run, run_config, run_ref, stage_summary
from affectflow.pipelines.prefect_env import guard_ephemeral_server
from affectflow.pipelines.prefect_logging import forward_project_logs
from affectflow.pipelines.publish import publish_stage
from affectflow.pipelines.task_runners import make_task_runner
from affectflow.stages.registry import STAGES, downstream_of

TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
# Tag of tasks that run a model; `prefect concurrency-limit create affectflow-gpu <GPUs>` makes
# Prefect run at most that many at once (docs/scaling.md).
GPU_TAG = "affectflow-gpu"


def task_job(ref: RunRef, stage_name: str) -> StageJob:
    """The stage job of a task, with the project's logs forwarded from this process (tasks of
    the Dask and Ray runners run in other processes than their flow)."""
    forward_project_logs()
    return make_job(ref, run_config(ref), stage_name)


def finished(ref: RunRef, stage_name: str) -> dict[str, Any]:
    """The stage's summary; a stage that ran (not skipped) posts its Prefect artifacts."""
    summary = stage_summary(ref, stage_name)
    if summary["status"] != "skipped":
        publish_stage(ref.store, stage_name)
    return summary


@task(task_run_name="{stage_name}", **TASK_OPTIONS)
def stage_task(ref: RunRef, stage_name: str, force: bool = False) -> dict[str, Any]:
    """A whole stage in one task: the stage loads its model once and streams its shards."""
    run_stage(task_job(ref, stage_name), force=force)
    return finished(ref, stage_name)


@task(task_run_name="{stage_name}-plan", **TASK_OPTIONS)
def plan_task(ref: RunRef, stage_name: str, force: bool = False) -> dict[str, Any]:
    plan = plan_stage(task_job(ref, stage_name), force=force)
    return {"fingerprint": plan.fingerprint, "pending": plan.pending, "up_to_date": plan.up_to_date}


@task(task_run_name="{stage_name}-shard-{shard_id}", retries=1, **TASK_OPTIONS)
def shard_task(ref: RunRef, stage_name: str, fingerprint: str, shard_id: int) -> int:
    run_shard(task_job(ref, stage_name), fingerprint, shard_id)
    return shard_id


@task(task_run_name="{stage_name}-finalize", **TASK_OPTIONS)
def finalize_task(ref: RunRef, stage_name: str, fingerprint: str) -> dict[str, Any]:
    finalize_stage(task_job(ref, stage_name), fingerprint)
    return finished(ref, stage_name)


def submit_stage(ref: RunRef, stage_name: str, force: bool,
                 wait_for: list[PrefectFuture[Any]]) -> PrefectFuture[dict[str, Any]]:
    """Shard-parallel stages fan out one task per pending shard; others run as one task."""
    if not STAGES[stage_name].shard_parallel:
        tags = [GPU_TAG] if STAGES[stage_name].uses_accelerator else []
        return stage_task.with_options(tags=tags).submit(ref, stage_name, force, wait_for=wait_for)
    plan = plan_task.submit(ref, stage_name, force, wait_for=wait_for).result()
    if plan["up_to_date"]:
        return stage_task.submit(ref, stage_name, False)
    shards = [shard_task.submit(ref, stage_name, plan["fingerprint"], shard_id)
              for shard_id in plan["pending"]]
    return finalize_task.submit(ref, stage_name, plan["fingerprint"], wait_for=shards)


def run_chain(ref: RunRef, stages: list[str], force: list[str]) -> dict[str, Any]:
    """Submit stages in order; each waits only for its own inputs, so independent ones overlap."""
    futures: dict[str, PrefectFuture[dict[str, Any]]] = {}
    config = run_config(ref)
    # progress rows place a stage in the run's whole chain, also when only part of it reruns
    set_stage_order(list(config.run.stages) if set(stages) <= set(config.run.stages) else stages)
    for name in stages:
        inputs = make_job(ref, config, name).stage.input_names(stage_params(config, name))
        upstream = [futures[dep] for dep in inputs if dep in futures]
        futures[name] = submit_stage(ref, name, name in force, upstream)
    wait(list(futures.values()))
    results, first_error = {}, None
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except UpstreamTaskError:
            continue  # never started: an input failed, and that failure is recorded
        except Exception as error:
            # Plan and shard tasks end a shard-parallel stage without `run_stage`'s record.
            ref.store.record_failure(name, error)
            first_error = first_error or error
    if first_error is not None:
        raise first_error
    return results


def run_id_name() -> str:
    """Flow run name: the affectflow run id as given (`new run` until a flow without one has made
    it; the flow renames its run to the id it made)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run_id = context.parameters.get("run_id") if context and context.parameters else None
    return str(run_id or "new run")


def name_this_flow_run(name: str) -> None:
    """Rename the current flow run (once a flow has made its run id)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_name(context.flow_run.id, name)


@flow(name="stage-chain", flow_run_name="{ref.run_id} · stages")
def chain_flow(ref: RunRef, stages: list[str], force: list[str]) -> dict[str, Any]:
    """The stages of one run on the configured task runner (a subflow, so each run picks its own)."""
    forward_project_logs()
    return run_chain(ref, stages, force)


def run_stages_on_configured_runner(ref: RunRef, config: Any, stages: list[str],
                                    force: list[str]) -> dict[str, Any]:
    runner = make_task_runner(config.run)
    return chain_flow.with_options(task_runner=runner)(ref, stages, force)


def expand_run_id(run_id: str | None) -> str | None:
    """A run id, with `{scheduled:FORMAT}` (the flow run's scheduled start, UTC; now outside a
    scheduled run) and `{flow}` filled in: `nightly-{scheduled:%Y%m%d}` gives each night its own
    run, a plain id makes every scheduled run continue (resume) the same one."""
    if not run_id or "{" not in run_id:
        return run_id
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)
    try:
        return run_id.format(scheduled=scheduled.astimezone(dt.UTC), flow=flow_run.flow_name or "run")
    except (KeyError, ValueError, IndexError) as error:
        raise UserError(f"bad run id template {run_id!r}: {error}",
                        hint="use {scheduled:%Y%m%d} and {flow}, e.g. nightly-{scheduled:%Y%m%d}") from None


def run_configured_flow(config_path: str, overrides: list[str] | None, run_id: str | None,
                        force: list[str] | None, update: bool) -> dict[str, Any]:
    """Shared body of the named flows: validate, open the run (an existing run only with its
    saved config, unless `update`), run its configured stage chain."""
    guard_ephemeral_server()
    forward_project_logs()
    config = load_config(Path(config_path), overrides or [])
    ref = run_ref(config, expand_run_id(run_id))
    if ref.run_id != run_id:
        name_this_flow_run(ref.run_id)
    with ref.store.writer():
        open_run(config, ref.run_id, update=update)
        stages = run_stages_on_configured_runner(ref, config, list(config.run.stages), force or [])
    return {"run_id": ref.run_id, "run_dir": str(ref.store.path), "stages": stages}


@flow(name="pretrain", flow_run_name=run_id_name)
def pretrain_flow(config_path: str, overrides: list[str] | None = None,
                  run_id: str | None = None, force: list[str] | None = None,
                  update: bool = False) -> dict[str, Any]:
    """Ingest -> scoring -> partition -> ... -> the configured stage chain of a pretraining run."""
    return run_configured_flow(config_path, overrides, run_id, force, update)


@flow(name="cternet", flow_run_name=run_id_name)
def cternet_flow(config_path: str, overrides: list[str] | None = None,
                 run_id: str | None = None, force: list[str] | None = None,
                 update: bool = False) -> dict[str, Any]:
    """Ingest a labelled image folder, train CTERNet, evaluate it (configs/cternet_*.yaml)."""
    return run_configured_flow(config_path, overrides, run_id, force, update)


@flow(name="resume", flow_run_name="{run_id} · resume")
def resume_flow(run_id: str, artifact_root: str = "artifacts") -> dict[str, Any]:
    """Compute again exactly the stages of a run that are not done (stale, failed, interrupted,
    not run), from the run's saved config."""
    from affectflow.pipelines.state import TO_RESUME, stage_states

    guard_ephemeral_server()
    forward_project_logs()
    ref = RunRef(artifact_root, run_id)
    with ref.store.writer(), ref.store.base_folder():
        config = run_config(ref)
        pending = [state.stage for state in stage_states(ref.store) if state.state in TO_RESUME]
        stages = run_stages_on_configured_runner(ref, config, pending, []) if pending else {}
    return {"run_id": run_id, "run_dir": str(ref.store.path), "stages": stages}


@flow(name="rerun-stage", flow_run_name="{run_id} · rerun {stage}")
def rerun_stage_flow(run_id: str, stage: str, artifact_root: str = "artifacts",
                     overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Rerun one stage of an existing run (overrides are recorded in the run's saved config) and
    report the downstream stages that are not done now."""
    from affectflow.pipelines.state import DONE, stage_states

    guard_ephemeral_server()
    forward_project_logs()
    ref = RunRef(artifact_root, run_id)
    with ref.store.writer(), ref.store.base_folder():
        config = run_config(ref, overrides or [])
        if overrides:
            ref.store.update_config(config_snapshot(config))
        summary = run_stages_on_configured_runner(ref, config, [stage], [stage] if force else [])[stage]
        after = downstream_of(stage, config.run.stages)
        stale = [state.stage for state in stage_states(ref.store)
                 if state.stage in after and state.state != DONE]
    return {"run_id": run_id, "stage": summary, "stale": stale}
