"""No-change rerun of the demo pretrain flow vs its first run, same process (target <= 0.25)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import BenchRow, start_prefect, timed
from bench.pipeline_profile import QUICK_DEMO, demo_workdir

REPO = Path(__file__).resolve().parents[1]


def run(quick: bool) -> list[BenchRow]:
    with tempfile.TemporaryDirectory() as tmp:
        start_prefect()
        from affectflow.pipelines.flows import pretrain_flow

        def pipeline() -> dict:
            return pretrain_flow(config_path=str(REPO / "configs" / "demo.yaml"),
                                 overrides=QUICK_DEMO if quick else [], run_id="bench")

        with demo_workdir(Path(tmp), quick):
            _first, first_seconds = timed(pipeline)
            second, rerun_seconds = timed(pipeline)
    statuses = {name: stage["status"] for name, stage in second["stages"].items()}
    if any(status != "skipped" for status in statuses.values()):
        raise RuntimeError(f"no-change rerun recomputed stages: {statuses}")
    return [BenchRow("demo no-change rerun / first run", rerun_seconds / first_seconds, 0.25,
                     higher_is_better=False, fixed_cost_at_quick=True,  # flow start-up vs a short first run
                     detail=f"first {first_seconds:.1f}s, rerun {rerun_seconds:.1f}s, "
                            f"stages {list(statuses)} all skipped")]
