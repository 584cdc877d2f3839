"""No-change rerun of the demo pretrain flow vs its first run, same process (target <= 0.25)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from affectflow.demo.generate import generate_demo
from affectflow.pipelines.prefect_env import configure_prefect_env
from bench.common import BenchRow, timed

REPO = Path(__file__).resolve().parents[1]


def run(quick: bool) -> list[BenchRow]:
    with tempfile.TemporaryDirectory() as tmp:
        configure_prefect_env(Path(tmp) / "prefect")
        from prefect import flow

        from affectflow.pipelines.flows import pretrain_flow

        @flow(name="bench-warm-up")
        def warm_up() -> None:
            """Starts the ephemeral Prefect API so neither timed run pays for it."""

        warm_up()
        data = Path(tmp) / "demo"
        generate_demo(data, posts=120 if quick else 420, seed=0)
        overrides = [f"ingest.path={data / 'tumemo'}", f"run.artifact_root={Path(tmp) / 'artifacts'}"]

        def pipeline() -> dict:
            return pretrain_flow(config_path=str(REPO / "configs" / "demo.yaml"),
                                 overrides=overrides, run_id="bench")

        first, first_seconds = timed(pipeline)
        second, rerun_seconds = timed(pipeline)
    statuses = {name: stage["status"] for name, stage in second["stages"].items()}
    if any(status != "skipped" for status in statuses.values()):
        raise RuntimeError(f"no-change rerun recomputed stages: {statuses}")
    return [BenchRow("demo no-change rerun / first run", rerun_seconds / first_seconds, 0.25,
                     higher_is_better=False,
                     detail=f"first {first_seconds:.1f}s, rerun {rerun_seconds:.1f}s, "
                            f"stages {list(statuses)} all skipped")]
