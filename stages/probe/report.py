"""The before/after tables (the shape of the PACL paper's Table 1) as markdown and as rows.

One section per task with that task's metric columns (accuracy and weighted F1; mAP and AUC;
mean MSE and R^2; accuracy and weighted F1 per level), one row per evaluation (linear probe,
fine-tuning, each zero-shot prompt), then the task's detail table (per class, per category, per
target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from affectflow.stages.probe.tasks import Headline, ProbeTask

if TYPE_CHECKING:
    from affectflow.stages.probe.evaluate import EvaluationResult

ENCODERS = ("before", "after")
EVALUATION_TITLES = {"linear": "Linear probe", "finetune": "Fine-tuning"}


@dataclass
class TaskResults:
    """One task's results: evaluation key -> its title and the result per encoder."""

    task: ProbeTask
    titles: dict[str, str]
    results: dict[str, dict[str, EvaluationResult]]
    note: str | None = None  # e.g. why zero-shot has no row


def _value(headline: Headline) -> str:
    return f"{100 * headline.value:.2f}" if headline.percent else f"{headline.value:.4f}"


def _delta(after: Headline, before: Headline) -> str:
    change = after.value - before.value
    return f"{100 * change:+.2f}" if after.percent else f"{change:+.4f}"


def _epochs(by_encoder: dict[str, EvaluationResult]) -> str:
    return "/".join("-" if by_encoder[e].best_epoch is None else str(by_encoder[e].best_epoch + 1)
                    for e in ENCODERS)


def _headline_rows(item: TaskResults) -> list[tuple[str, str | None, list[Headline], list[Headline], str]]:
    """(evaluation title, level, before metrics, after metrics, best epochs) per table row."""
    rows = []
    for key, by_encoder in item.results.items():
        before = item.task.headline(by_encoder["before"].test)
        after = item.task.headline(by_encoder["after"].test)
        for (level, metrics_before), (_, metrics_after) in zip(before, after):
            rows.append((item.titles[key], level, metrics_before, metrics_after, _epochs(by_encoder)))
    return rows


def _task_section(item: TaskResults) -> list[str]:
    rows = _headline_rows(item)
    names = [metric.name for metric in rows[0][2]]
    arrows = {metric.name: "" if metric.higher_is_better else " (lower is better)" for metric in rows[0][2]}
    has_level = rows[0][1] is not None
    header = "| Evaluation |" + (" Level |" if has_level else "") + "".join(
        f" {name} before | {name} after | Δ {name}{arrows[name]} |" for name in names) \
        + " best epoch (before/after) |"
    rule = "| --- |" + (" --- |" if has_level else "") + " ---: | ---: | ---: |" * len(names) + " :---: |"
    lines = [f"## {item.task.heading}", "", header, rule]
    for title, level, before, after, epochs in rows:
        cells = "".join(f" {_value(b)} | {_value(a)} | {_delta(a, b)} |" for b, a in zip(before, after))
        lines.append(f"| {title} |" + (f" {level} |" if has_level else "") + cells + f" {epochs} |")
    if item.note:
        lines += ["", item.note]
    return [*lines, "", *_details(item), ""]


def _number(value: float | None, percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _details(item: TaskResults) -> list[str]:
    """The task's detail table (per class, category or target), before → after per evaluation."""
    details = {key: {e: item.task.detail(by_encoder[e].test) for e in ENCODERS}
               for key, by_encoder in item.results.items()}
    first = next(iter(details.values()))["before"]
    if first is None:
        return []
    single = len(first.columns) == 1
    columns = [(key, index) for key in details for index in range(len(first.columns))]
    lines = [f"### {first.heading} (before → after)", "",
             "| | " + " | ".join(item.titles[key] + ("" if single else f" {first.columns[index]}")
                                 for key, index in columns) + " |",
             "| --- |" + " :---: |" * len(columns)]
    for row, (name, _) in enumerate(first.rows):
        cells = []
        for key, index in columns:
            before, after = (details[key][e].rows[row][1][index] for e in ENCODERS)  # type: ignore[union-attr]
            cells.append(f"{_number(before, first.percent)} → {_number(after, first.percent)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, "", first.note] if first.note else lines


def results_markdown(tasks: list[TaskResults], dataset: str, encoder_spec: str,
                     splits: dict[str, int]) -> str:
    """Every task's before/after table and its details."""
    lines = [
        f"# PACL downstream evaluation on {dataset}",
        "",
        f"Encoder `{encoder_spec}`: **before** = the weights PACL started from, **after** = the "
        f"PACL-trained weights. Trained on train ({splits['train']} images), epoch selected on "
        f"val ({splits['val']}), reported on test ({splits['test']}). Δ = after − before; "
        "accuracy, F1, mAP and AUC in %.",
        "",
    ]
    for item in tasks:
        lines += _task_section(item)
    return "\n".join(lines).rstrip() + "\n"


def results_table(tasks: list[TaskResults]) -> list[dict[str, Any]]:
    """The main tables as long rows for the manifest summary: one per task, evaluation, level and
    metric."""
    rows = []
    for item in tasks:
        for key, by_encoder in item.results.items():
            before = item.task.headline(by_encoder["before"].test)
            after = item.task.headline(by_encoder["after"].test)
            for (level, metrics_before), (_, metrics_after) in zip(before, after):
                for b, a in zip(metrics_before, metrics_after):
                    rows.append({"task": item.task.kind, "evaluation": key, "level": level,
                                 "metric": b.name, "before": b.value, "after": a.value,
                                 "delta": a.value - b.value})
    return rows
