"""The probe's Prefect artifact: the before/after table the stage wrote (stages/probe/report.py)
with its confusion-matrix pictures. `probe_ingest` shows its accounting only."""

from __future__ import annotations

from affectflow.core.runs import RunStore
from affectflow.stages.probe.stage import RESULTS_FILE
from affectflow.stages.views import StageView, picture_markdown, stage_markdown


def results_page(run: RunStore) -> str:
    artifact = run.stage("probe")
    files = artifact.manifest["summary"]["files"]
    lines = [stage_markdown(artifact, RESULTS_FILE), f"Run `{run.run_id}`."]
    for figure in (name for name in files if name.endswith(".png")):
        lines += ["", *picture_markdown(artifact, figure, f"confusion matrices: {figure}")]
    return "\n".join(lines)


def prefect_views(run: RunStore, stage: str) -> list[StageView]:
    if stage != "probe":
        return []
    return [StageView("results", f"before/after PACL evaluation of run {run.run_id}",
                      markdown=results_page(run))]
