"""End-to-end demo pipeline wall time split by stage, and the share spent in Prefect orchestration
(target <= 10% once the ephemeral server is up); plus shard-parallel ingest speed-up with 2 Dask
workers vs 1 on this machine (target >= 1.6x)."""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affectflow.demo.generate import generate_demo
from affectflow.demo.models import build_demo_models
from bench.common import BenchRow, start_prefect

REPO = Path(__file__).resolve().parents[1]
# --quick: the demo chain on a smaller demo with a short PACL run.
QUICK_DEMO = ["pacl.epochs=6"]


def _flow_seconds(config_overrides: list[str], run_id: str) -> tuple[float, dict[str, Any]]:
    from affectflow.pipelines.flows import pretrain_flow

    start = time.perf_counter()
    result = pretrain_flow(config_path=str(REPO / "configs" / "demo.yaml"),
                           overrides=config_overrides, run_id=run_id)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def demo_workdir(tmp: Path, quick: bool) -> Iterator[Path]:
    """A working folder laid out like the repository's (`artifacts/demo-data` with demo data and
    models), made current so configs/demo.yaml's relative paths resolve there; yields the data."""
    work = tmp / "work"
    data = work / "artifacts" / "demo-data"
    if quick:
        generate_demo(data, posts=140, seed=0, per_class=10, caption_pairs=640, emotic_images=30,
                      webemo_per_class=4)
    else:
        generate_demo(data, seed=0)
    build_demo_models(data, epochs=4 if quick else 8)
    with contextlib.chdir(work):
        yield data


def run(quick: bool) -> list[BenchRow]:
    with tempfile.TemporaryDirectory() as tmp:
        start_prefect()
        with demo_workdir(Path(tmp), quick):
            wall, result = _flow_seconds(QUICK_DEMO if quick else [], "profile")
            rows = [_orchestration_share(wall, result)]
            if importlib.util.find_spec("prefect_dask") is not None:
                rows.append(_dask_speedup(Path(tmp), quick))
        return rows


def _orchestration_share(wall: float, result: dict[str, Any]) -> BenchRow:
    """Share of the flow's wall time in which no stage was working: Prefect starting the flow
    and subflow, submitting tasks and recording states. Stages overlap (a stage waits only for
    its own inputs), so this is wall time minus the union of the stages' [start, finish]."""
    timings = [summary["timings"] for summary in result["stages"].values()]
    covered, reach = 0.0, float("-inf")
    for start, finish in sorted((t["started_at"], t["finished_at"]) for t in timings):
        covered += max(0.0, finish - max(start, reach))
        reach = max(reach, finish)
    share = max(0.0, wall - covered) / wall
    return BenchRow("demo pipeline: Prefect orchestration share", share, 0.10,
                    higher_is_better=False, fixed_cost_at_quick=True,  # flow start-up vs a short demo
                    detail=f"wall {wall:.1f}s, stages at work {covered:.1f}s: "
                    + ", ".join(f"{name} {t['seconds']:.1f}s"
                                for name, t in zip(result["stages"], timings)))


def _warm_cluster(workers: int) -> Any:
    """A LocalCluster of single-threaded worker processes that have already imported the ingest
    stage, so the timed run measures shard work, not interpreter and torch start-up."""
    from distributed import Client, LocalCluster

    from affectflow.pipelines.task_runners import worker_environment

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, env=worker_environment())
    with Client(cluster) as client:
        client.run(importlib.import_module, "affectflow.stages.ingest.stage")
        client.run(importlib.import_module, "affectflow.pipelines.flows")
    return cluster


def _dask_speedup(tmp: Path, quick: bool) -> BenchRow:
    """Ingest of phone-sized JPEGs (1536 px), the CPU-bound map stage, in shards of 128 with 1 vs
    2 single-threaded Dask workers: each shard is ~0.6 s of decoding, well above Prefect's
    per-task cost, as a real dataset's shards are."""
    from bench.ingest_speed import make_posts

    posts = tmp / "big"
    posts.mkdir()
    make_posts(posts, 512 if quick else 1024, 1536, distinct=16)
    seconds = {}
    for workers in (1, 2):
        cluster = _warm_cluster(workers)
        try:
            # run.workers=1: one decode thread per shard on both sides, so the speed-up is the
            # Dask shard parallelism alone.
            overrides = [f"ingest.path={posts}", "run.task_runner=dask",
                         f"run.dask_address={cluster.scheduler_address}",
                         "run.workers=1", "ingest.shard_size=128", "run.stages=[ingest]"]
            _, result = _flow_seconds(overrides, f"dask-{workers}")
        finally:
            cluster.close()
        seconds[workers] = result["stages"]["ingest"]["timings"]["seconds"]
    return BenchRow("ingest speed-up, 2 Dask workers vs 1", seconds[1] / seconds[2], 1.6,
                    detail=f"1 worker {seconds[1]:.1f}s, 2 workers {seconds[2]:.1f}s (stage time; "
                           f"cluster start and worker imports excluded)")
