"""The markdown report of a CTERNet evaluation: our test metrics beside the paper's figures for
the same dataset and task.

Class names come from dataset folder names, so every cell is escaped (HTML specials and the
table separator) before it goes into the markdown.
"""

from __future__ import annotations

import html
from typing import Any

from affectflow.stages.cternet.polarity import POLARITY_MAPS, POSITIVE
from affectflow.stages.metrics import ClassificationMetrics

CONFUSION_FIGURE = "confusion_matrix.png"
DATASET_NAMES = {"fi": "FI", "emotion6": "Emotion6", "artphoto": "ArtPhoto",
                 "twitter2": "Twitter II"}


def _cell(value: object) -> str:
    return html.escape(str(value)).replace("|", "\\|")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _accuracy_rows(metrics: ClassificationMetrics, grouped: float | None, paper: float | None,
                   training: dict[str, Any]) -> list[str]:
    classes = len(metrics.per_class)
    paper_cell = "—" if paper is None else f"{paper}"
    if training["task"] == "polarity":
        first = (f"| binary accuracy (2-class model trained on polarity labels) | "
                 f"{_percent(metrics.accuracy)} | {paper_cell} |")
    else:
        first = f"| accuracy ({classes}-class) | {_percent(metrics.accuracy)} | {paper_cell} |"
    rows = [first]
    if grouped is not None:
        rows.append(f"| polarity of the {classes}-class predictions (grouped, not a binary model) "
                    f"| {_percent(grouped)} | — |")
    rows.append(f"| weighted F1 | {_percent(metrics.weighted_f1)} | — |")
    return rows


def _notes(grouped: float | None, paper: float | None, training: dict[str, Any]) -> list[str]:
    """What the figures are and are not: the paper column, the grouped figure, the Eq. 5 cap
    (no limit for two classes), a random backbone."""
    polarity_map = training["polarity_map"]
    dataset = DATASET_NAMES.get(polarity_map or "", "")
    notes = []
    if paper is not None:
        notes.append(f"The paper column holds the paper's reported {dataset} figure (Res2Net-101 "
                     "ImageNet-pretrained, 448 px), not a result of this run.")
    elif polarity_map is None:
        notes.append("No paper figure applies: cternet_train.polarity_map does not name the "
                     "dataset (fi, emotion6, artphoto, twitter2).")
    else:
        notes.append(f"The paper reports no {dataset} figure for task {training['task']}.")
    if grouped is None and training["task"] == "emotion" and polarity_map is not None:
        notes.append(f"No grouped polarity figure: not every class has a polarity under map "
                     f"{polarity_map!r}.")
    if grouped is not None:
        positive = sorted(label for label, polarity in POLARITY_MAPS[polarity_map].items()
                          if polarity == POSITIVE)
        notes.append("The grouped figure maps the true and the predicted class of the emotion "
                     f"model to their polarity (positive: {', '.join(positive)}); the paper's "
                     "binary figures come from models trained on polarity labels "
                     "(cternet_train.task: polarity).")
    if training["mode"] == "full" and training["head"] == "features" and len(training["classes"]) > 2:
        notes.append("Head `features` (Eq. 5, concat(S, X)) in mode `full`: the classifier is "
                     "linear after GAP, so X cancels in the total effect Y_TE = P - P* and the "
                     "prediction can name two classes at most; head `attended` (Fig. 2, public "
                     "code) keeps X in Y_TE.")
    if training["weights_source"] == "random":
        notes.append("**The backbone started from random weights** (no pretrained weights were "
                     "available), so these figures are not comparable with the paper's.")
    return notes


def render_report(metrics: ClassificationMetrics, grouped: float | None, paper: float | None,
                  training: dict[str, Any]) -> str:
    """`training` is the cternet_train summary (task, model, weights source, selected epoch);
    `grouped` the polarity of an emotion model's predictions, `paper` the paper's accuracy (%)
    for this dataset and task."""
    dataset = DATASET_NAMES.get(training["polarity_map"] or "", "dataset not named")
    lines = [
        "# CTERNet evaluation",
        "",
        f"Test split: {metrics.samples} images, {len(metrics.per_class)} classes, task "
        f"`{_cell(training['task'])}`. Model: backbone `{_cell(training['backbone'])}` (weights: "
        f"{_cell(training['weights_source'])}), mode `{_cell(training['mode'])}`, head "
        f"`{_cell(training['head'])}`, sentiment map `{_cell(training['sentiment_map'])}`, "
        f"{_cell(training['precision'])}, input {training['input_size']} px (eval crop "
        f"`{_cell(training['eval_crop'])}`); epoch {training['best_epoch']} of "
        f"{training['epochs']} selected on the validation split "
        f"(val accuracy {_percent(training['best_val_accuracy'])}%).",
        "",
        "## Accuracy (%)",
        "",
        f"| metric | this run | CTERNet paper ({dataset}, reported) |",
        "| --- | ---: | ---: |",
        *_accuracy_rows(metrics, grouped, paper, training),
        "",
    ]
    for note in _notes(grouped, paper, training):
        lines += [note, ""]
    lines += ["## Per class", "", "| class | precision | recall | F1 | support |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {_cell(row.name)} | {_percent(row.precision)} | {_percent(row.recall)} | "
              f"{_percent(row.f1)} | {row.support} |" for row in metrics.per_class]
    lines += ["", f"![confusion matrix]({CONFUSION_FIGURE})", ""]
    return "\n".join(lines)
