"""What the cluster stage reports: sizes and objective per K, agreement with planted emotions.

With a ground-truth CSV (source_id, emotion = the image's planted emotion, text_emotion = the
text's), factual clusters are compared with the image emotion and emotional clusters with the
text emotion by the adjusted Rand index (1 = same grouping, about 0 = chance). The sweep figure
shows the mean squared distance to the centroid (inertia / samples) and, when known, the ARI
against K for both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from affectflow.stages.cluster.kmeans import KmeansResult
from affectflow.stages.ground_truth import EMOTION_COLUMNS

SIDES = ("factual", "emotional")
TRUTH_COLUMNS = dict(zip(SIDES, EMOTION_COLUMNS))
"""Factual clusters are compared with the planted image emotion, emotional ones with the text's."""


def side_report(results: dict[int, KmeansResult], dim: int) -> dict[str, Any]:
    """Sizes, inertia and timing per K (JSON keys are strings)."""
    return {"feature_dim": dim,
            "by_k": {str(k): {"sizes": result.sizes, "inertia": result.inertia,
                              "seconds": round(result.seconds, 3)}
                     for k, result in sorted(results.items())}}


def add_truth(report: dict[str, Any], results: dict[str, dict[int, KmeansResult]],
              source_ids: list[str], truth: dict[str, dict[str, str]]) -> None:
    """Adjusted Rand index per side and K on the samples the truth labels with both emotions
    (`truth`: source_id -> ground-truth row); counts in `report`."""
    from sklearn.metrics import adjusted_rand_score

    truth = {source_id: row for source_id, row in truth.items()
             if all(row[column] for column in TRUTH_COLUMNS.values())}
    labelled = np.array([source_id in truth for source_id in source_ids], dtype=bool)
    report["ground_truth"] = {"labelled_samples": int(labelled.sum()),
                              "unlabelled_samples": int((~labelled).sum()),
                              "compared_with": dict(TRUTH_COLUMNS)}
    for side in SIDES:
        planted = [truth[source_id][TRUTH_COLUMNS[side]] for source_id in source_ids
                   if source_id in truth]
        for k, result in results[side].items():
            report[side]["by_k"][str(k)]["ari"] = (
                float(adjusted_rand_score(planted, result.labels[labelled])) if planted else None)


def draw_sweep(path: Path, report: dict[str, Any]) -> None:
    """Mean squared distance per K and, with ground truth, the ARI per K, both sides."""
    from affectflow.stages.pictures import new_figure, save_png

    with_truth = "ground_truth" in report
    figure = new_figure(figsize=(9 if with_truth else 5, 3.6), dpi=110)
    axes = figure.subplots(1, 2 if with_truth else 1, squeeze=False)[0]
    samples = max(report["samples"], 1)
    for side in SIDES:
        by_k = report[side]["by_k"]
        ks = [int(k) for k in by_k]
        axes[0].plot(ks, [by_k[str(k)]["inertia"] / samples for k in ks], marker="o", label=side)
        if with_truth:
            axes[1].plot(ks, [by_k[str(k)]["ari"] for k in ks], marker="o", label=side)
    axes[0].set(xlabel="K", ylabel="mean squared distance to centroid", title="k-means objective")
    axes[0].legend()
    if with_truth:
        axes[1].set(xlabel="K", ylabel="adjusted Rand index",
                    title="vs planted emotion (image / text)")
        axes[1].axhline(0.0, color="grey", linewidth=0.8)
        axes[1].legend()
    figure.tight_layout()
    save_png(figure, path)
