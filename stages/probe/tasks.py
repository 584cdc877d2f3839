"""The four downstream task kinds of the PACL paper's Table 1, as the probe trains and scores them.

- `single_label` (FI, Emotion6, UnbiasedEmo): one class per image; cross-entropy; accuracy and
  weighted F1.
- `multi_label` (Emotic categories): a set of categories per image; one logit per category with
  binary cross-entropy; mAP and ROC AUC over categories (threshold-free, from the scores).
- `regression` (Emotic and IAPS valence / arousal / dominance): one output per target, trained
  with MSE on targets standardised by the TRAIN split's mean and standard deviation (predictions
  are mapped back, so metrics are on the data set's own scale); mean MSE and mean R^2.
- `hierarchical` (WebEmo 2 -> 7 -> 25): one model predicts every level; accuracy and weighted F1
  per level. Two readings of "one model" (the paper does not say which): `per_level` (default,
  the public code's) gives the shared features one linear head per level and sums the levels'
  cross-entropies; `finest` trains one head on the finest level and gives a coarser class the
  summed probability of its finest classes, so the levels are one distribution.

A task holds the truth of every row of the probe set (`truth`, aligned with `ProbeSet`) and turns
head outputs into scores (probabilities, predicted values, per-level probabilities) and scores
into metrics. Zero-shot scores (cosines to class prompts) go through the same metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from affectflow.core.errors import UserError
from affectflow.stages.ingest.annotations import LabelLevel, class_paths, hierarchy_classes
from affectflow.stages.ingest.stage import TEST, TRAIN, VAL

if TYPE_CHECKING:
    from torch import Tensor

    from affectflow.stages.metrics import ClassificationMetrics, MultiLabelMetrics, RegressionMetrics

TaskKind = Literal["single_label", "multi_label", "regression", "hierarchical"]
HierarchyHead = Literal["per_level", "finest"]
Scores = Any  # np.ndarray (samples, width), or one array per level for hierarchical tasks


@dataclass(frozen=True)
class Headline:
    """One metric of a results row: its name, value and whether higher is better."""

    name: str
    value: float
    percent: bool = True
    higher_is_better: bool = True


@dataclass(frozen=True)
class Detail:
    """A per-class / per-category / per-target table of one evaluation's test metrics."""

    heading: str
    columns: list[str]
    rows: list[tuple[str, list[float | None]]]
    percent: bool = True
    note: str | None = None


@dataclass(frozen=True)
class PredictionRow:
    """How one test sample is shown in the predictions table (one row per level)."""

    level: str | None
    label: str
    predicted: str
    scores: list[float]


@dataclass(frozen=True)
class LevelMetrics:
    """Classification metrics of every level of a hierarchical label, coarsest first."""

    levels: dict[str, ClassificationMetrics]

    def as_dict(self) -> dict[str, Any]:
        return {name: metrics.as_dict() for name, metrics in self.levels.items()}


def _joined(names: Sequence[str]) -> str:
    return ";".join(names)


class ProbeTask(ABC):
    """What a head predicts for one task kind, its loss, and its metrics."""

    kind: ClassVar[TaskKind]
    title: ClassVar[str]
    selection_name: ClassVar[str]  # what `selection` returns, for logs
    unit: ClassVar[str]  # what `names` are: classes, categories, targets

    def __init__(self, truth: np.ndarray, names: list[str]) -> None:
        self.truth = truth
        self.names = names  # what each output of a flat head predicts (a hierarchy: its leaves)

    @property
    def width(self) -> int:
        """Outputs of the head."""
        return len(self.names)

    @property
    def heading(self) -> str:
        """Section title in results.md: the kind and what is predicted."""
        return f"{self.title} ({len(self.names)} {self.unit})"

    def describe(self) -> dict[str, Any]:
        """Class names / categories / targets / levels, for the manifest summary."""
        return {self.unit: self.names}

    @abstractmethod
    def targets(self, rows: np.ndarray) -> Tensor:
        """What the loss compares the head's outputs with, for the given row indices."""

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean training loss of (batch, width) outputs."""

    @abstractmethod
    def scores(self, outputs: Tensor) -> Scores:
        """Head outputs -> what the metrics read (probabilities, predicted values)."""

    @abstractmethod
    def metrics(self, scores: Scores, truth: np.ndarray) -> Any:
        """Metrics of scores against the truth of the same rows."""

    @abstractmethod
    def selection(self, metrics: Any) -> float:
        """The val number that picks the epoch (higher is better)."""

    @abstractmethod
    def headline(self, metrics: Any) -> list[tuple[str | None, list[Headline]]]:
        """The results-table rows of one evaluation: (level or None, its metrics)."""

    def detail(self, metrics: Any) -> Detail | None:
        """The task's detail table beside the headline; none by default."""
        return None

    @abstractmethod
    def prediction_rows(self, scores: Scores, truth: np.ndarray,
                        calibrated: bool) -> list[list[PredictionRow]]:
        """Per test sample, its rows of the predictions table; `calibrated` is False for
        zero-shot cosines, which are scores but not probabilities."""

    @property
    def prompt_classes(self) -> list[list[str]] | None:
        """Class names to prompt zero-shot, one list per score block; None: no zero-shot."""
        return [self.names]

    def zero_shot_scores(self, blocks: list[np.ndarray]) -> Scores:
        """Cosines to each block's class prompts -> scores the metrics read."""
        return blocks[0]

    def confusions(self, metrics: Any) -> list[tuple[str | None, list[str], list[list[int]]]]:
        """(level, classes, confusion matrix) pictures worth drawing; none by default."""
        return []

    def val_score(self, outputs: Tensor, truth: np.ndarray) -> float:
        return self.selection(self.metrics(self.scores(outputs), truth))


def _check_split_coverage(positives: np.ndarray, splits: np.ndarray, what: str) -> None:
    """Val selects and test reports by ranking, which needs a positive and a negative of some
    category in each."""
    for split in (VAL, TEST):
        chosen = positives[splits == split]
        if not len(chosen) or not ((chosen.sum(axis=0) > 0) & (chosen.sum(axis=0) < len(chosen))).any():
            raise UserError(f"the '{split}' split has no {what} with both positive and negative "
                            "images, so mAP and AUC are undefined there",
                            hint="give probe_ingest a larger labelled set or other split_ratios")


class SingleLabel(ProbeTask):
    kind = "single_label"
    title = "Single-label classification"
    selection_name = "accuracy"
    unit = "classes"

    def targets(self, rows: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy(self.truth[rows]).long()

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(outputs, targets)

    def scores(self, outputs: Tensor) -> np.ndarray:
        import torch

        return torch.softmax(outputs.float(), dim=1).numpy()

    def metrics(self, scores: np.ndarray, truth: np.ndarray) -> ClassificationMetrics:
        from affectflow.stages.metrics import classification_metrics

        return classification_metrics(truth, np.asarray(scores).argmax(axis=1), self.names)

    def selection(self, metrics: ClassificationMetrics) -> float:
        return metrics.accuracy

    def headline(self, metrics: ClassificationMetrics) -> list[tuple[str | None, list[Headline]]]:
        return [(None, [Headline("Acc", metrics.accuracy), Headline("wF1", metrics.weighted_f1)])]

    def detail(self, metrics: ClassificationMetrics) -> Detail:
        return Detail("Per-class F1 on test", ["F1"], [(c.name, [c.f1]) for c in metrics.per_class])

    def prediction_rows(self, scores: np.ndarray, truth: np.ndarray,
                        calibrated: bool) -> list[list[PredictionRow]]:
        return [[PredictionRow(None, self.names[t], self.names[int(s.argmax())], s.tolist())]
                for s, t in zip(np.asarray(scores), truth)]


    def confusions(self, metrics: ClassificationMetrics) -> list[tuple[str | None, list[str], list[list[int]]]]:
        return [(None, self.names, metrics.confusion)]


class MultiLabel(ProbeTask):
    kind = "multi_label"
    title = "Multi-label classification"
    selection_name = "mAP"
    unit = "categories"

    def __init__(self, truth: np.ndarray, categories: list[str], splits: np.ndarray) -> None:
        super().__init__(truth, categories)
        _check_split_coverage(truth, splits, "category")

    def targets(self, rows: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy(self.truth[rows]).float()

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(outputs, targets)

    def scores(self, outputs: Tensor) -> np.ndarray:
        import torch

        return torch.sigmoid(outputs.float()).numpy()

    def metrics(self, scores: np.ndarray, truth: np.ndarray) -> MultiLabelMetrics:
        from affectflow.stages.metrics import multilabel_metrics

        return multilabel_metrics(truth, scores, self.names)

    def selection(self, metrics: MultiLabelMetrics) -> float:
        return metrics.mean_average_precision

    def headline(self, metrics: MultiLabelMetrics) -> list[tuple[str | None, list[Headline]]]:
        return [(None, [Headline("mAP", metrics.mean_average_precision),
                        Headline("AUC", metrics.mean_roc_auc)])]

    def detail(self, metrics: MultiLabelMetrics) -> Detail:
        return Detail("Per-category average precision on test", ["AP"],
                      [(c.name, [c.average_precision]) for c in metrics.per_category],
                      note="n/a: the category has no positive test image (left out of mAP).")

    def prediction_rows(self, scores: np.ndarray, truth: np.ndarray,
                        calibrated: bool) -> list[list[PredictionRow]]:
        """`predicted` lists the categories with probability >= 0.5, or for zero-shot cosines
        (no calibrated threshold) the top category; the metrics read `scores`, not this text."""
        rows = []
        for score, positive in zip(np.asarray(scores), truth):
            chosen = np.flatnonzero(score >= 0.5) if calibrated else [int(score.argmax())]
            rows.append([PredictionRow(None, _joined([self.names[i] for i in np.flatnonzero(positive)]),
                                       _joined([self.names[i] for i in chosen]), score.tolist())])
        return rows



class Regression(ProbeTask):
    kind = "regression"
    title = "Regression"
    selection_name = "-mean MSE"
    unit = "targets"

    def __init__(self, truth: np.ndarray, names: list[str], train: np.ndarray) -> None:
        super().__init__(truth, names)
        fitted = truth[train]
        self.mean = fitted.mean(axis=0)
        self.std = np.maximum(fitted.std(axis=0), 1e-6)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "train_mean": self.mean.tolist(),
                "train_std": self.std.tolist()}

    @property
    def prompt_classes(self) -> None:
        """Targets are numbers, not classes: nothing to prompt."""
        return None

    @property
    def heading(self) -> str:
        return f"{self.title} ({', '.join(self.names)})"

    def targets(self, rows: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy((self.truth[rows] - self.mean) / self.std).float()

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.mse_loss(outputs, targets)

    def scores(self, outputs: Tensor) -> np.ndarray:
        return outputs.float().numpy() * self.std + self.mean

    def metrics(self, scores: np.ndarray, truth: np.ndarray) -> RegressionMetrics:
        from affectflow.stages.metrics import regression_metrics

        return regression_metrics(truth, scores, self.names)

    def selection(self, metrics: RegressionMetrics) -> float:
        return -metrics.mean_mse

    def headline(self, metrics: RegressionMetrics) -> list[tuple[str | None, list[Headline]]]:
        return [(None, [Headline("MSE", metrics.mean_mse, percent=False, higher_is_better=False),
                        Headline("R²", metrics.mean_r2, percent=False)])]

    def detail(self, metrics: RegressionMetrics) -> Detail:
        return Detail("Per-target MSE and R² on test", ["MSE", "R²"],
                      [(t.name, [t.mse, t.r2]) for t in metrics.per_target], percent=False)

    def prediction_rows(self, scores: np.ndarray, truth: np.ndarray,
                        calibrated: bool) -> list[list[PredictionRow]]:
        return [[PredictionRow(None, _joined([f"{v:.3g}" for v in t]),
                               _joined([f"{v:.3g}" for v in s]), s.tolist())]
                for s, t in zip(np.asarray(scores), truth)]


class Hierarchical(ProbeTask):
    kind = "hierarchical"
    title = "Hierarchical classification"
    selection_name = "mean level accuracy"
    unit = "finest classes"

    def __init__(self, truth: np.ndarray, levels: list[LabelLevel], head: HierarchyHead) -> None:
        classes = hierarchy_classes(levels)
        super().__init__(truth, classes[-1])
        self.level_names = [level.name for level in levels]
        self.level_classes = classes
        self.head = head
        # membership[l][f, c] = 1 when finest class f lies under class c of level l
        paths = class_paths(levels)
        finest = self.level_classes[-1]
        self.membership = [np.array([[float(paths[f][level] == c) for c in classes] for f in finest])
                           for level, classes in enumerate(self.level_classes)]

    @property
    def widths(self) -> list[int]:
        return [len(classes) for classes in self.level_classes]

    @property
    def width(self) -> int:
        return sum(self.widths) if self.head == "per_level" else self.widths[-1]

    def describe(self) -> dict[str, Any]:
        return {"levels": dict(zip(self.level_names, self.level_classes)), "head": self.head}

    @property
    def heading(self) -> str:
        levels = " → ".join(f"{name} {len(classes)}"
                            for name, classes in zip(self.level_names, self.level_classes))
        return f"{self.title} ({levels}; {self.head.replace('_', '-')} head)"

    def targets(self, rows: np.ndarray) -> Tensor:
        import torch

        return torch.from_numpy(self.truth[rows]).long()

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        import torch.nn.functional as F

        if self.head == "finest":
            return F.cross_entropy(outputs, targets[:, -1])
        blocks = outputs.split(self.widths, dim=1)
        return sum(F.cross_entropy(block, targets[:, level]) for level, block in enumerate(blocks))

    def scores(self, outputs: Tensor) -> list[np.ndarray]:
        import torch

        if self.head == "per_level":
            return [torch.softmax(block.float(), dim=1).numpy()
                    for block in outputs.split(self.widths, dim=1)]
        finest = torch.softmax(outputs.float(), dim=1).numpy()
        return [finest @ membership for membership in self.membership]

    def metrics(self, scores: list[np.ndarray], truth: np.ndarray) -> LevelMetrics:
        from affectflow.stages.metrics import classification_metrics

        return LevelMetrics({name: classification_metrics(truth[:, level], scores[level].argmax(axis=1),
                                                          self.level_classes[level])
                             for level, name in enumerate(self.level_names)})

    def selection(self, metrics: LevelMetrics) -> float:
        return float(np.mean([level.accuracy for level in metrics.levels.values()]))

    def headline(self, metrics: LevelMetrics) -> list[tuple[str | None, list[Headline]]]:
        return [(name, [Headline("Acc", level.accuracy), Headline("wF1", level.weighted_f1)])
                for name, level in metrics.levels.items()]

    def prediction_rows(self, scores: list[np.ndarray], truth: np.ndarray,
                        calibrated: bool) -> list[list[PredictionRow]]:
        return [[PredictionRow(name, self.level_classes[level][truth[sample, level]],
                               self.level_classes[level][int(scores[level][sample].argmax())],
                               scores[level][sample].tolist())
                 for level, name in enumerate(self.level_names)]
                for sample in range(len(truth))]

    @property
    def prompt_classes(self) -> list[list[str]]:
        return self.level_classes

    def zero_shot_scores(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """Each level prompted with its own class names, as the public code does; the trained
        heads' `hierarchy_head` choice does not apply to prompts."""
        return blocks

    def confusions(self, metrics: LevelMetrics) -> list[tuple[str | None, list[str], list[list[int]]]]:
        return [(name, self.level_classes[level], metrics.levels[name].confusion)
                for level, name in enumerate(self.level_names)]



@dataclass(frozen=True)
class Annotations:
    """What the labelled rows carry, aligned with the probe set's rows (None where absent)."""

    labels: list[str | None]
    label_ids: list[int | None]
    label_sets: list[list[str] | None]
    targets: list[list[float] | None]


def make_task(kind: TaskKind, rows: Annotations, splits: np.ndarray, ingest: dict[str, Any],
              hierarchy_head: HierarchyHead) -> ProbeTask:
    """The task over these rows; `ingest` is probe_ingest's recorded params (declared categories,
    target names, label tree)."""
    if kind == "single_label":
        present = sorted({i for i in rows.label_ids if i is not None})
        names = dict(zip(rows.label_ids, rows.labels))
        index_of = {label_id: index for index, label_id in enumerate(present)}
        return SingleLabel(np.array([index_of[i] for i in rows.label_ids]),
                           [str(names[i]) for i in present])
    if kind == "multi_label":
        categories = ingest.get("labels") or sorted({c for s in rows.label_sets for c in s or []})
        column = {name: index for index, name in enumerate(categories)}
        truth = np.zeros((len(rows.label_sets), len(categories)), dtype=np.int64)
        for row, chosen in enumerate(rows.label_sets):
            truth[row, [column[c] for c in chosen or []]] = 1
        return MultiLabel(truth, list(categories), splits)
    if kind == "regression":
        return Regression(np.array(rows.targets, dtype=np.float64), list(ingest["targets"]),
                          splits == TRAIN)
    levels = [LabelLevel(**level) for level in ingest["hierarchy"]]
    paths, classes = class_paths(levels), hierarchy_classes(levels)
    truth = np.array([[classes[level].index(name) for level, name in enumerate(paths[str(label)])]
                      for label in rows.labels])
    return Hierarchical(truth, levels, hierarchy_head)
