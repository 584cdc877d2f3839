"""The cluster stage's Prefect artifact: the K sweep (sizes, objective, agreement with planted
emotions) as a table, with the sweep figure."""

from __future__ import annotations

from affectflow.core.runs import RunStore
from affectflow.stages.cluster.report import SIDES, TRUTH_COLUMNS
from affectflow.stages.views import MISSING, StageView, picture_markdown


def sweep_markdown(run: RunStore) -> str:
    artifact = run.stage("cluster")
    report = artifact.manifest["summary"]
    samples = max(report["samples"], 1)
    truth = report.get("ground_truth")
    lines = [f"### k-means sweep of run `{run.run_id}`", "",
             f"{report['samples']} samples; image features of `{report['visual_encoder']}` "
             f"(factual side), text features of the teacher (emotional side); {report['niter']} "
             f"iterations, {report['nredo']} restart(s), seed {report['seed']}, faiss on "
             f"{report['faiss_device']}.", ""]
    if truth:
        lines += [f"Adjusted Rand index against the planted emotion on {truth['labelled_samples']} "
                  "labelled samples (factual clusters vs the image's emotion, emotional clusters "
                  "vs the text's): 1 = the same grouping, about 0 = chance.", ""]
    lines += ["| side | K | mean squared distance | ARI | cluster sizes |", "| --- | ---: | ---: | ---: | --- |"]
    for side in SIDES:
        for k, facts in report[side]["by_k"].items():
            ari = facts.get("ari")
            lines.append(f"| {side} | {k} | {facts['inertia'] / samples:.4f} | "
                         f"{MISSING if ari is None else f'{ari:.3f}'} | "
                         f"{', '.join(str(size) for size in facts['sizes'])} |")
    for figure in report.get("figures", []):
        lines += ["", *picture_markdown(artifact, figure, "k-means sweep")]
    return "\n".join(lines)


def prefect_views(run: RunStore, stage: str) -> list[StageView]:
    compared = " / ".join(TRUTH_COLUMNS.values())
    return [StageView("sweep", f"k-means sweep of run {run.run_id} (ARI vs {compared})",
                      markdown=sweep_markdown(run))]
