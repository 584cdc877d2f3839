"""End-to-end demo pipeline wall time split by stage, and the share spent in Prefect orchestration
(target <= 10% once the ephemeral server is up); plus shard-parallel ingest speed-up with 2 Dask
workers vs 1 on this machine (target >= 1.6x)."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

from affectflow.demo.generate import generate_demo
from affectflow.demo.models import build_demo_models
from affectflow.pipelines.prefect_env import configure_prefect_env
from bench.common import BenchRow

REPO = Path(__file__).resolve().parents[1]


def _flow_seconds(config_overrides: list[str], run_id: str) -> tuple[float, dict[str, Any]]:
    from affectflow.pipelines.flows import pretrain_flow

    start = time.perf_counter()
    result = pretrain_flow(config_path=str(REPO / "configs" / "demo.yaml"),
                           overrides=config_overrides, run_id=run_id)
    return time.perf_counter() - start, result


def run(quick: bool) -> list[BenchRow]:
    with tempfile.TemporaryDirectory() as tmp:
        configure_prefect_env(Path(tmp) / "prefect")
        from prefect import flow

        @flow(name="bench-warm-up")
        def warm_up() -> None:
            """Starts the ephemeral Prefect API so the timed runs do not pay for it."""

        warm_up()
        data = Path(tmp) / "demo"
        generate_demo(data, posts=140 if quick else 420, seed=0, per_class=4,
                      caption_pairs=640 if quick else 1400)
        build_demo_models(data, epochs=4 if quick else 8)
        root = Path(tmp) / "artifacts"
        base = [f"run.artifact_root={root}", f"ingest.path={data / 'tumemo'}",
                f"factual.clip={data / 'models' / 'clip'}", f"emotional.clip={data / 'models' / 'clip'}",
                f"emotional.anp_vocabulary={data / 'anps.txt'}",
                f"partition.ground_truth={data / 'ground_truth.csv'}"]
        wall, result = _flow_seconds(base, "profile")
        stage_seconds = {name: s["timings"]["seconds"] for name, s in result["stages"].items()}
        share = max(0.0, wall - sum(stage_seconds.values())) / wall
        rows = [BenchRow("demo pipeline: Prefect orchestration share", share, 0.10,
                         higher_is_better=False,
                         detail=f"wall {wall:.1f}s; " + ", ".join(
                             f"{k} {v:.1f}s" for k, v in stage_seconds.items()))]
        if importlib.util.find_spec("prefect_dask") is not None:
            rows.append(_dask_speedup(Path(tmp), data, base, quick))
        return rows


def _dask_speedup(tmp: Path, data: Path, base: list[str], quick: bool) -> BenchRow:
    """Ingest of large JPEGs, the CPU-bound map stage, with 1 vs 2 single-threaded Dask workers."""
    from bench.ingest_speed import make_posts

    posts = tmp / "big"
    posts.mkdir()
    make_posts(posts, 96 if quick else 240, 768)
    seconds = {}
    for workers in (1, 2):
        overrides = base + [f"ingest.path={posts}", "run.task_runner=dask", f"run.workers={workers}",
                            "ingest.shard_size=8", "run.stages=[ingest]"]
        wall, result = _flow_seconds(overrides, f"dask-{workers}")
        seconds[workers] = result["stages"]["ingest"]["timings"]["seconds"]
    return BenchRow("ingest speed-up, 2 Dask workers vs 1", seconds[1] / seconds[2], 1.6,
                    detail=f"1 worker {seconds[1]:.1f}s, 2 workers {seconds[2]:.1f}s "
                           f"(stage time, cluster start excluded)")
