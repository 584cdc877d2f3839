"""The before/after table (the shape of the PACL paper's Table 1) as markdown and as a dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affectflow.stages.metrics import ClassificationMetrics

ENCODERS = ("before", "after")
EVALUATION_TITLES = {"linear": "Linear probe", "finetune": "Fine-tuning", "zero_shot": "Zero-shot"}


@dataclass
class EvaluationResult:
    """Test metrics of one evaluation of one encoder, and how its epoch was selected on val."""

    metrics: ClassificationMetrics
    val_accuracy: float
    best_epoch: int | None  # 0-based; None for zero-shot (nothing is trained)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the manifest; epochs are counted from 1 there, as in results.md."""
        epoch = None if self.best_epoch is None else self.best_epoch + 1
        return {"test": self.metrics.as_dict(), "val_accuracy": self.val_accuracy,
                "best_epoch": epoch}


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _delta(after: float, before: float) -> str:
    return f"{100 * (after - before):+.2f}"


def results_markdown(results: dict[str, dict[str, EvaluationResult]], class_names: list[str],
                     dataset: str, encoder_spec: str, test_size: int) -> str:
    """Accuracy and weighted F1 before vs after PACL per evaluation, then per-class F1."""
    lines = [
        f"# PACL downstream evaluation on {dataset}",
        "",
        f"Encoder `{encoder_spec}`: **before** = the weights PACL started from, **after** = the "
        f"PACL-trained weights. Trained on train, epoch selected on val, reported on test "
        f"({test_size} images, {len(class_names)} classes).",
        "",
        "| Evaluation | Acc before | Acc after | Δ Acc | wF1 before | wF1 after | Δ wF1 | best epoch (before/after) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for evaluation, by_encoder in results.items():
        before, after = by_encoder["before"], by_encoder["after"]
        epochs = "/".join("-" if r.best_epoch is None else str(r.best_epoch + 1)
                          for r in (before, after))
        lines.append(
            f"| {EVALUATION_TITLES[evaluation]} | {_percent(before.metrics.accuracy)} | "
            f"{_percent(after.metrics.accuracy)} | {_delta(after.metrics.accuracy, before.metrics.accuracy)} | "
            f"{_percent(before.metrics.weighted_f1)} | {_percent(after.metrics.weighted_f1)} | "
            f"{_delta(after.metrics.weighted_f1, before.metrics.weighted_f1)} | {epochs} |")
    lines += ["", "## Per-class F1 on test (before → after)", "",
              "| Class | " + " | ".join(EVALUATION_TITLES[e] for e in results) + " |",
              "| --- | " + " | ".join(":---:" for _ in results) + " |"]
    for index, name in enumerate(class_names):
        cells = [f"{_percent(r['before'].metrics.per_class[index].f1)} → "
                 f"{_percent(r['after'].metrics.per_class[index].f1)}" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_table(results: dict[str, dict[str, EvaluationResult]]) -> list[dict[str, Any]]:
    """The main table as rows for the manifest summary."""
    rows = []
    for evaluation, by_encoder in results.items():
        before, after = by_encoder["before"].metrics, by_encoder["after"].metrics
        rows.append({"evaluation": evaluation,
                     "accuracy_before": before.accuracy, "accuracy_after": after.accuracy,
                     "accuracy_delta": after.accuracy - before.accuracy,
                     "weighted_f1_before": before.weighted_f1, "weighted_f1_after": after.weighted_f1,
                     "weighted_f1_delta": after.weighted_f1 - before.weighted_f1})
    return rows
