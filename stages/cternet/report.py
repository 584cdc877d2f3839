"""The markdown report of a CTERNet evaluation: our test metrics beside the paper's FI figures.

Class names come from dataset folder names, so every cell is escaped (HTML specials and the
table separator) before it goes into the markdown.
"""

from __future__ import annotations

import html
from typing import Any

from affectflow.stages.cternet.metrics import PAPER_FI_ACCURACY
from affectflow.stages.metrics import ClassificationMetrics

CONFUSION_FIGURE = "confusion_matrix.png"


def _cell(value: object) -> str:
    return html.escape(str(value)).replace("|", "\\|")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def render_report(metrics: ClassificationMetrics, binary_accuracy: float | None,
                  training: dict[str, Any]) -> str:
    """`training` is the cternet_train summary (model, weights source, selected epoch)."""
    fi = binary_accuracy is not None
    paper = PAPER_FI_ACCURACY if fi else {}
    lines = [
        "# CTERNet evaluation",
        "",
        f"Test split: {metrics.samples} images, {len(metrics.per_class)} classes. "
        f"Model: backbone `{_cell(training['backbone'])}` (weights: "
        f"{_cell(training['weights_source'])}), mode `{_cell(training['mode'])}`, input "
        f"{training['input_size']} px; epoch {training['best_epoch']} of {training['epochs']} "
        "selected on the validation split "
        f"(val accuracy {_percent(training['best_val_accuracy'])}%).",
        "",
        "## Accuracy (%)",
        "",
        "| metric | this run | CTERNet paper (FI, reported) |",
        "| --- | ---: | ---: |",
        f"| accuracy ({len(metrics.per_class)}-class) | {_percent(metrics.accuracy)} | "
        f"{paper.get('accuracy', '—')} |",
        f"| binary accuracy | {_percent(binary_accuracy)} | "
        f"{paper.get('binary_accuracy', '—')} |",
        f"| weighted F1 | {_percent(metrics.weighted_f1)} | — |",
        "",
    ]
    if fi:
        lines.append("The paper column holds the paper's reported figures (full FI, Res2Net-101 "
                     "ImageNet-pretrained, 448 px), not results of this run. Our binary accuracy "
                     "groups the 8-class predictions by polarity (positive: amusement, awe, "
                     "contentment, excitement).")
    else:
        lines.append("The classes are not the FI set, so no binary accuracy and no paper figures "
                     "apply.")
    if training["weights_source"] == "random":
        lines += ["", "**The backbone started from random weights** (no pretrained weights were "
                      "available), so these figures are not comparable with the paper's."]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {_cell(row.name)} | {_percent(row.precision)} | {_percent(row.recall)} | "
              f"{_percent(row.f1)} | {row.support} |" for row in metrics.per_class]
    lines += ["", f"![confusion matrix]({CONFUSION_FIGURE})", ""]
    return "\n".join(lines)
