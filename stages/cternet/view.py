"""CTERNet's Prefect artifacts: the evaluation report the stage wrote (stages/cternet/report.py)
with its confusion matrix embedded, and the training curves with the selected epoch."""

from __future__ import annotations

from affectflow.core.runs import RunStore
from affectflow.stages.cternet.evaluate import REPORT_FILE
from affectflow.stages.cternet.report import CONFUSION_FIGURE
from affectflow.stages.cternet.train import CURVES_FIGURE
from affectflow.stages.views import StageView, cell, percent, picture_markdown, stage_markdown


def evaluation_page(run: RunStore) -> str:
    """report.md links its picture relatively (beside the file); here it is embedded instead."""
    artifact = run.stage("cternet_eval")
    report = stage_markdown(artifact, REPORT_FILE)
    picture = "\n".join(picture_markdown(artifact, CONFUSION_FIGURE, "confusion matrix"))
    return report.replace(f"![confusion matrix]({CONFUSION_FIGURE})", picture) + f"\nRun `{run.run_id}`.\n"


def training_page(run: RunStore) -> str:
    artifact = run.stage("cternet_train")
    summary = artifact.manifest["summary"]
    lines = [f"### CTERNet training of run `{run.run_id}`", "",
             f"Backbone `{cell(summary['backbone'])}` (weights: {cell(summary['weights_source'])}), "
             f"mode `{cell(summary['mode'])}`, {summary['input_size']} px, "
             f"{summary['train_images']} train / {summary['val_images']} val images, "
             f"{len(summary['classes'])} classes.", "",
             f"Epoch {summary['best_epoch']} of {summary['epochs']} selected on val: val accuracy "
             f"{percent(summary['best_val_accuracy'], 2)}; final train accuracy "
             f"{percent(summary['final_train_accuracy'], 2)}; {summary['images_per_second']:.1f} "
             "images/s.", ""]
    lines += picture_markdown(artifact, CURVES_FIGURE, "CTERNet training curves")
    return "\n".join(lines)


def prefect_views(run: RunStore, stage: str) -> list[StageView]:
    if stage == "cternet_eval":
        return [StageView("report", f"CTERNet test metrics and confusion matrix of run {run.run_id}",
                          markdown=evaluation_page(run))]
    return [StageView("training", f"CTERNet training of run {run.run_id}", markdown=training_page(run))]
