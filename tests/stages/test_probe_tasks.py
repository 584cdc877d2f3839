"""The probe's task kinds without images: losses and scores against their definitions written
out by hand, selection that never sees test truth for every task kind, the lr schedule, the
per-prompt zero-shot scores and the params' paper defaults."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file, hash_value
from affectflow.core.loading import LoaderSettings
from affectflow.core.pixel_cache import PixelCache
from affectflow.models.pacl.model import PaclModel
from affectflow.stages.ingest.annotations import LabelLevel
from affectflow.stages.ingest.stage import IngestParams
from affectflow.stages.probe.evaluate import ProbeSet, linear_evaluation
from affectflow.stages.probe.linear import BestEpoch, HeadTraining, lr_schedule
from affectflow.stages.probe.params import ProbeParams
from affectflow.stages.probe.stage import ProbeStage
from affectflow.stages.probe.tasks import Hierarchical, MultiLabel, ProbeTask, Regression, SingleLabel
from affectflow.stages.probe.zeroshot import PAPER_PROMPTS, prompt_variants, zero_shot_cosines

torch.set_num_threads(1)

TREE = [LabelLevel(name="polarity", groups={"pos": ["joy", "love"], "neg": ["anger"]}),
        LabelLevel(name="emotion", groups={"joy": ["cheer", "zest"], "love": ["lust"],
                                           "anger": ["rage", "envy"]}),
        LabelLevel(name="fine")]
FINE_PARENTS = {"cheer": ("pos", "joy"), "zest": ("pos", "joy"), "lust": ("pos", "love"),
                "rage": ("neg", "anger"), "envy": ("neg", "anger")}


def test_best_epoch_prefers_score_then_lower_loss_then_earlier() -> None:
    selection = BestEpoch()
    for score, loss in ((0.5, 1.0), (0.75, 0.9), (0.75, 0.8), (0.75, 0.8), (0.6, 0.1)):
        selection.record(score, loss)
    assert selection.best == 2


# ---------------------------------------------------------------- losses and scores by hand
def test_hierarchical_per_level_loss_is_the_sum_of_each_levels_cross_entropy() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 4]])  # (polarity, emotion, fine) class indices
    task = Hierarchical(truth, TREE, "per_level")
    assert task.widths == [2, 3, 5] and task.width == 10
    outputs = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    expected = 0.0
    for level, (start, width) in enumerate(((0, 2), (2, 3), (5, 5))):
        for row in range(2):
            logits = outputs[row, start:start + width].tolist()
            log_sum = math.log(sum(math.exp(v) for v in logits))
            expected += (log_sum - logits[truth[row, level]]) / 2  # mean over the batch
    assert float(task.loss(outputs, task.targets(np.arange(2)))) == pytest.approx(expected, rel=1e-5)


def test_hierarchical_finest_head_sums_the_probabilities_of_each_coarse_classs_leaves() -> None:
    truth = np.array([[0, 0, 0], [1, 2, 3]])
    task = Hierarchical(truth, TREE, "finest")
    assert task.width == 5
    outputs = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    polarity, emotion, fine = task.scores(outputs)
    leaves = ["cheer", "zest", "lust", "rage", "envy"]
    for row in range(4):
        exps = [math.exp(v) for v in outputs[row].tolist()]
        probabilities = {leaf: e / sum(exps) for leaf, e in zip(leaves, exps)}
        for column, name in enumerate(["pos", "neg"]):
            assert polarity[row, column] == pytest.approx(
                sum(p for leaf, p in probabilities.items() if FINE_PARENTS[leaf][0] == name))
        for column, name in enumerate(["joy", "love", "anger"]):
            assert emotion[row, column] == pytest.approx(
                sum(p for leaf, p in probabilities.items() if FINE_PARENTS[leaf][1] == name))
        assert fine[row] == pytest.approx([probabilities[leaf] for leaf in leaves])
    # the loss only reads the finest level
    targets = task.targets(np.arange(2))
    assert float(task.loss(outputs[:2], targets)) == pytest.approx(
        float(nn.functional.cross_entropy(outputs[:2], targets[:, -1])))


def test_regression_standardises_with_the_train_split_and_reports_on_the_data_scale() -> None:
    truth = np.array([[1.0, 9.0], [3.0, 7.0], [5.0, 5.0], [100.0, -50.0]])
    train = np.array([True, True, True, False])  # the last row is test: an outlier
    task = Regression(truth, ["valence", "arousal"], train)
    assert task.mean.tolist() == pytest.approx([3.0, 7.0])
    assert task.std.tolist() == pytest.approx([math.sqrt(8 / 3)] * 2)
    targets = task.targets(np.arange(4))
    assert targets[0].tolist() == pytest.approx([-2 / math.sqrt(8 / 3), 2 / math.sqrt(8 / 3)])
    assert task.scores(targets) == pytest.approx(truth)  # outputs map back to the data's scale
    metrics = task.metrics(task.scores(targets[:3] + 1.0), truth[:3])
    assert metrics.mean_mse == pytest.approx(8 / 3)  # an error of one std on each target


def test_multi_label_loss_is_binary_cross_entropy_per_category() -> None:
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    task = MultiLabel(truth, ["a", "b", "c"], np.array(["val", "val", "test", "test"]))
    outputs = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    expected = 0.0
    for row in range(2):
        for column in range(3):
            p = 1 / (1 + math.exp(-float(outputs[row, column])))
            expected -= (math.log(p) if truth[row, column] else math.log(1 - p)) / 6
    assert float(task.loss(outputs, task.targets(np.arange(2)))) == pytest.approx(expected)


def test_multi_label_needs_a_ranked_category_in_val_and_test() -> None:
    truth = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])  # val ranks both, test neither
    with pytest.raises(UserError, match="'test' split has no category"):
        MultiLabel(truth, ["a", "b"], np.array(["val", "val", "test", "test"]))


# ---------------------------------------------------------------- no test leakage, every kind
def _probe_set(seed: int, count: int = 160) -> tuple[ProbeSet, np.ndarray]:
    """Features around per-class centres; `classes` is each row's planted class (0..7)."""
    rng = np.random.default_rng(seed)
    classes = np.arange(count) % 8
    centres = rng.normal(size=(8, 16))
    features = (centres[classes] + rng.normal(scale=0.6, size=(count, 16))).astype(np.float32)
    splits = np.array(["train"] * 96 + ["val"] * 32 + ["test"] * 32)
    data = ProbeSet(sample_ids=np.array([f"s{i}" for i in range(count)]), splits=splits,
                    paths=[""] * count, sha256s=[""] * count, features={"after": features})
    return data, classes


def _task(kind: str, classes: np.ndarray, splits: np.ndarray) -> ProbeTask:
    """Each task kind's truth planted on the same classes (so a linear head can learn it)."""
    if kind == "single_label":
        return SingleLabel(classes.copy(), [f"c{i}" for i in range(8)])
    if kind == "multi_label":  # categories: the class's bits
        truth = np.array([[(c >> bit) & 1 for bit in range(3)] for c in classes])
        return MultiLabel(truth, ["b0", "b1", "b2"], splits)
    if kind == "regression":
        truth = np.stack([classes * 1.0 + 1, (classes % 3) * 2.0 + 1], axis=1)
        return Regression(truth, ["valence", "arousal"], splits == "train")
    fine = ["cheer", "zest", "lust", "rage", "envy"]
    paths = {leaf: (0 if FINE_PARENTS[leaf][0] == "pos" else 1,
                    ["joy", "love", "anger"].index(FINE_PARENTS[leaf][1]), fine.index(leaf))
             for leaf in fine}
    truth = np.array([paths[fine[c % 5]] for c in classes])
    return Hierarchical(truth, TREE, "per_level")


KINDS = ["single_label", "multi_label", "regression", "hierarchical"]


@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_test_truth_and_features_change_nothing_but_the_test_metrics(kind: str) -> None:
    training = HeadTraining(epochs=12, lr=1e-2, batch_size=16, weight_decay=0.0, seed=0)
    clean, classes = _probe_set(0)
    poisoned, _ = _probe_set(0)
    test = poisoned.rows("test")
    poisoned.features["after"][test] = 0.0
    reference_task = _task(kind, classes, clean.splits)
    attacked_task = _task(kind, classes, poisoned.splits)
    if kind == "regression":
        attacked_task.truth[test] = 1000.0
    elif kind == "multi_label":
        attacked_task.truth[test] = 1 - attacked_task.truth[test]
    else:
        attacked_task.truth[test] = attacked_task.truth[test][::-1]
    reference = linear_evaluation(clean, reference_task, "after", training)
    attacked = linear_evaluation(poisoned, attacked_task, "after", training)
    assert attacked.result.best_epoch == reference.result.best_epoch
    assert attacked.result.val == reference.result.val
    assert attacked.result.test != reference.result.test
    learned = {  # the planted structure is learnt: well above chance on clean test data
        "single_label": lambda m: m.accuracy > 0.5,
        "multi_label": lambda m: m.mean_average_precision > 0.8,
        "regression": lambda m: m.mean_r2 > 0.5,
        "hierarchical": lambda m: all(level.accuracy > 0.5 for level in m.levels.values()),
    }
    assert learned[kind](reference.result.test)


# ---------------------------------------------------------------- schedule
def test_cosine_schedule_decays_per_optimiser_step_to_zero_and_constant_stays() -> None:
    for schedule, expected in (("cosine", lambda s, n: 0.5 * (1 + math.cos(math.pi * s / n))),
                               ("constant", lambda s, n: 1.0)):
        head = nn.Linear(2, 2)
        optimizer = torch.optim.AdamW(head.parameters(), lr=0.01)
        training = HeadTraining(epochs=3, lr=0.01, batch_size=8, weight_decay=0.0, seed=0,
                                schedule=schedule)  # type: ignore[arg-type]
        scheduler = lr_schedule(optimizer, training, steps_per_epoch=4)
        seen = []
        for _ in range(12):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert seen == pytest.approx([0.01 * expected(step, 12) for step in range(12)])


# ---------------------------------------------------------------- zero-shot, prompt by prompt
def test_each_prompt_is_scored_alone_and_the_ensemble_averages_their_embeddings() -> None:
    torch.manual_seed(0)
    model = PaclModel(nn.Identity(), visual_dim=6, text_dim=5, embed_dim=4)
    images = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    prompts = torch.randn(2, 2, 5)  # (classes, templates, text_dim)
    variants = prompt_variants(list(PAPER_PROMPTS), ensemble=True)
    assert [v.key for v in variants] == ["zero_shot/p1", "zero_shot/p2", "zero_shot/ensemble"]
    assert variants[0].title == 'Zero-shot "A photo with [C] emotion."'
    assert variants[1].title == 'Zero-shot "The photo makes me feel so [C]!"'
    assert len(prompt_variants(list(PAPER_PROMPTS), ensemble=False)) == 2

    def unit(vector: list[float]) -> list[float]:
        norm = math.sqrt(sum(v * v for v in vector))
        return [v / norm for v in vector]

    def project(weight: torch.Tensor, vector: list[float]) -> list[float]:
        return [sum(w * v for w, v in zip(row, vector)) for row in weight.tolist()]

    with torch.no_grad():
        image_weight, text_weight = model.image_projection.weight, model.text_projection.weight
    embedded = [[unit(project(text_weight, prompts[c, t].tolist())) for t in range(2)] for c in range(2)]
    class_sets = [[embedded[c][0] for c in range(2)], [embedded[c][1] for c in range(2)],
                  [unit([(a + b) / 2 for a, b in zip(*embedded[c])]) for c in range(2)]]
    for variant, classes in zip(variants, class_sets):
        cosines = zero_shot_cosines(model, images, prompts, variant)
        for i in range(3):
            image = unit(project(image_weight, images[i].tolist()))
            for c in range(2):
                assert cosines[i, c] == pytest.approx(sum(a * b for a, b in zip(image, classes[c])),
                                                      abs=1e-5)


# ---------------------------------------------------------------- params and config checks
def test_paper_defaults_and_backbone_lr_by_architecture() -> None:
    params = ProbeParams()
    assert (params.linear_epochs, params.linear_lr) == (40, 1e-2)
    assert (params.finetune_epochs, params.finetune_head_lr) == (40, 1e-2)
    assert params.lr_schedule == "cosine" and params.prompts == list(PAPER_PROMPTS)
    assert not params.zero_shot_ensemble
    assert params.backbone_lr("timm:resnet50") == 1e-4
    assert params.backbone_lr("timm:hf-hub:timm/resnet50.a1_in1k") == 1e-4
    assert params.backbone_lr("open_clip:ViT-B-32:openai") == 1e-5
    assert params.backbone_lr("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k") == 1e-5
    assert params.backbone_lr("timm:swin_base_patch4_window7_224") == 1e-5
    assert ProbeParams(finetune_backbone_lr=3e-5).backbone_lr("timm:resnet50") == 3e-5
    for unknown in ("open_clip:local-dir:/models/clip", "timm:convnext_base", "timm:test_resnet"):
        with pytest.raises(UserError, match="gives no fine-tuning backbone lr"):
            params.backbone_lr(unknown)


def test_probe_params_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly once"):
        ProbeParams(prompts=["A photo with emotion."])
    with pytest.raises(ValidationError, match="at most once"):
        ProbeParams(evaluations=["linear", "linear"])
    with pytest.raises(ValidationError, match="extra"):
        ProbeParams(linear_epoch=3)
    with pytest.raises(ValidationError, match="regression has none"):
        ProbeParams(tasks=["regression"], evaluations=["linear", "zero_shot"])
    with pytest.raises(ValidationError, match="path does not exist"):
        ProbeParams(pacl_from=tmp_path / "nope")
    with pytest.raises(ValidationError, match="no finished stage"):
        ProbeParams(pacl_from=tmp_path)
    (tmp_path / "_manifest.json").write_text('{"stage": "cluster"}')
    with pytest.raises(ValidationError, match="holds the 'cluster' stage, not pacl"):
        ProbeParams(pacl_from=tmp_path)


def test_tasks_need_their_annotations_configured_in_probe_ingest(tmp_path: Path) -> None:
    stage = ProbeStage()
    folder = IngestParams(source="image_folder", path=tmp_path)
    for task, setting in (("multi_label", "columns.label_set"), ("regression", "targets"),
                          ("hierarchical", "hierarchy")):
        with pytest.raises(ValueError, match=f"probe_ingest.{setting}"):
            stage.check_config(ProbeParams(tasks=[task], evaluations=["linear"]),
                               {"probe_ingest": folder})
    stage.check_config(ProbeParams(), {"probe_ingest": folder})


def test_another_runs_pacl_excludes_this_runs_and_its_encoder_picks_the_lr(tmp_path: Path) -> None:
    (tmp_path / "_manifest.json").write_text('{"stage": "pacl", "fingerprint": "f", "digest": "d", '
                                             '"params": {"visual_encoder": "open_clip:local-dir:/m"}}')
    stage = ProbeStage()
    params = ProbeParams(pacl_from=tmp_path)
    assert stage.input_names(params) == ("probe_ingest",)
    assert stage.input_names(ProbeParams()) == ("pacl", "probe_ingest")
    assert stage.source_fingerprint(params, None) == hash_value(["f", "d"])
    with pytest.raises(ValueError, match="would go unused"):
        stage.check_config(params, {"pacl": object()})
    with pytest.raises(ValueError, match=r"set probe\.finetune_backbone_lr"):
        stage.check_config(ProbeParams(pacl_from=tmp_path, evaluations=["finetune"]), {})
    stage.check_config(ProbeParams(pacl_from=tmp_path, evaluations=["finetune"],
                                   finetune_backbone_lr=1e-5), {})


def test_fine_tuning_reads_train_and_val_images_only_and_test_once_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image file loaded while fine-tuning is recorded: none is a test image; test images
    are loaded only afterwards, for the kept model's predictions."""
    import affectflow.stages.pacl.images as pacl_images
    import affectflow.stages.probe.evaluate as evaluate
    from affectflow.models.pacl.augment import ViewConfig
    from affectflow.models.pacl.model import build_pacl_model
    from tests.conftest import write_image

    splits = np.array(["train"] * 8 + ["val"] * 4 + ["test"] * 4)
    classes = np.arange(16) % 2
    paths = [str(write_image(tmp_path / f"{i}.jpg", size=(40, 40),
                             colour=(200, 40, 40) if c else (40, 40, 200)))
             for i, c in enumerate(classes)]
    data = ProbeSet(sample_ids=np.array([f"s{i}" for i in range(16)]), splits=splits, paths=paths,
                    sha256s=[hash_file(path) for path in paths], features={})
    loaded: list[str] = []
    real = pacl_images.pixel_batches  # every image fine-tuning reads, train and eval views alike

    def spy(requests, *args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.extend(request.path for request in requests)
        return real(requests, *args, **kwargs)
    monkeypatch.setattr(pacl_images, "pixel_batches", spy)
    during: list[str] = []
    real_fine_tune = evaluate.fine_tune

    def recording_fine_tune(*args, **kwargs):  # type: ignore[no-untyped-def]
        tuned = real_fine_tune(*args, **kwargs)
        during.extend(loaded)
        return tuned
    monkeypatch.setattr(evaluate, "fine_tune", recording_fine_tune)
    model, backbone = build_pacl_model("timm:test_resnet", text_dim=8, embed_dim=4, pretrained=False)
    view = ViewConfig(32, backbone.mean, backbone.std)
    training = HeadTraining(epochs=2, lr=1e-2, batch_size=4, weight_decay=0.0, seed=0)
    outcome = evaluate.finetune_evaluation(data, SingleLabel(classes, ["blue", "red"]), model, view,
                                           training, 1e-4,
                                           LoaderSettings(1, PixelCache(tmp_path / "cache", 10**9)),
                                           torch.device("cpu"))
    train, val, test = ({paths[i] for i in data.rows(split)} for split in ("train", "val", "test"))
    assert set(during) == train | val  # the epochs read train and val, never test
    assert set(loaded[len(during):]) == test | val  # afterwards: the kept model on val and test
    assert outcome.result.best_epoch in (0, 1) and outcome.result.test.samples == 4
