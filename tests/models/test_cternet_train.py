"""CTERNet training loop: learning, val-only selection, exact resume, checkpoints.

Multi-process training through torchrun is tested at the stage level
(tests/stages/test_cternet_stages.py), which drives the same launcher.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from affectflow.models.cternet import train as cternet_train
from affectflow.models.cternet.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT
from affectflow.models.cternet.classifier import TrainedClassifier, sentiment_maps
from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.data import (
    ImageDataset,
    LabelledImages,
    cached_pixels,
    eval_geometry,
    eval_transform,
    to_model_pixels,
    train_transform,
)
from affectflow.models.cternet.model import build_cternet
from affectflow.models.cternet.train import (
    Runtime,
    TrainingOutcome,
    TrainingRecipe,
    evaluate_accuracy,
    read_outcome,
    train_cternet,
)

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]
# The paper's choices except the head: Eq. 5's total effect names two classes at most
# (test_cternet.py), and these tests need a model that can learn all four.
CONFIG = CTERNetConfig(backbone="test_resnet", pretrained=False, input_size=32, num_classes=4,
                       head="attended")
# Eq. 4 weighs class maps by their own raw means, so S grows with their square: lr 0.1 diverges.
RECIPE = TrainingRecipe(epochs=6, batch_size=8, lr=0.02, step_size=4, crop_scale=(0.5, 1.0))
RUNTIME = Runtime(device="cpu")
TIMING_FIELDS = {"images_per_second", "seconds"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _colour_images(folder: Path, count: int, rng: random.Random) -> LabelledImages:
    """Noisy single-colour squares, class = colour: learnable in a few epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for index in range(count):
        label = index % len(COLOURS)
        colour = tuple(min(255, max(0, c + rng.randint(-40, 40))) for c in COLOURS[label])
        path = folder / f"{index:03d}.png"
        Image.new("RGB", (40 + rng.randint(0, 16), 40), colour).save(path)
        paths.append(str(path))
        labels.append(label)
    return LabelledImages(tuple(paths), tuple(labels))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabelledImages, LabelledImages]:
    root = tmp_path_factory.mktemp("colours")
    rng = random.Random(0)
    return _colour_images(root / "train", 32, rng), _colour_images(root / "val", 12, rng)


@pytest.fixture(scope="module")
def trained(data: tuple[LabelledImages, LabelledImages],
            tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingOutcome, Path]:
    work_dir = tmp_path_factory.mktemp("trained")
    return train_cternet(CONFIG, RECIPE, *data, work_dir, RUNTIME), work_dir


def _without_timing(outcome: TrainingOutcome) -> list[dict[str, Any]]:
    return [{key: value for key, value in dataclasses.asdict(row).items()
             if key not in TIMING_FIELDS} for row in outcome.history]


def _states_equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_training_learns_a_tiny_problem(trained: tuple[TrainingOutcome, Path]) -> None:
    outcome, _ = trained
    assert [row.epoch for row in outcome.history] == list(range(1, RECIPE.epochs + 1))
    assert min(row.train_loss for row in outcome.history) < 0.5 * outcome.history[0].train_loss
    assert max(row.train_accuracy for row in outcome.history) >= 0.75
    assert outcome.best_val_accuracy >= 0.9  # chance is 0.25
    assert [row.lr for row in outcome.history] == pytest.approx([0.02] * 4 + [0.002] * 2)


def test_best_epoch_is_the_first_maximum_of_validation_accuracy(
        trained: tuple[TrainingOutcome, Path], data: tuple[LabelledImages, LabelledImages]) -> None:
    outcome, work_dir = trained
    val_accuracies = [row.val_accuracy for row in outcome.history]
    assert outcome.best_epoch == val_accuracies.index(max(val_accuracies)) + 1
    best = torch.load(work_dir / BEST_CHECKPOINT, weights_only=True)
    assert best["epoch"] == outcome.best_epoch
    model = build_cternet(CONFIG, device="cpu")
    model.load_state_dict(best["model"])
    dataset = ImageDataset(data[1], eval_transform(CONFIG), pixels=cached_pixels(CONFIG))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    rescored = evaluate_accuracy(model, loader, torch.device("cpu"), RUNTIME)
    assert rescored == pytest.approx(outcome.best_val_accuracy)


def test_checkpoints_hold_everything_to_resume_and_load_weights_only(
        trained: tuple[TrainingOutcome, Path]) -> None:
    outcome, work_dir = trained
    last = torch.load(work_dir / LAST_CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "history", "epoch", "best_epoch",
            "signature"} <= set(last)
    assert last["epoch"] == RECIPE.epochs and len(last["history"]) == RECIPE.epochs
    assert last["scheduler"]["last_epoch"] == RECIPE.epochs
    assert isinstance(last["rng"][0]["cpu"], torch.Tensor)
    assert read_outcome(work_dir) == outcome


def test_interrupted_training_resumes_to_identical_results(
        trained: tuple[TrainingOutcome, Path], data: tuple[LabelledImages, LabelledImages],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved_epochs: list[int] = []
    original_save_last = cternet_train.save_last

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        original_save_last(*args, **kwargs)
        saved_epochs.append(args[-1].epoch)
        if len(saved_epochs) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cternet_train, "save_last", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_cternet(CONFIG, RECIPE, *data, tmp_path, RUNTIME)
    monkeypatch.setattr(cternet_train, "save_last", original_save_last)
    resumed = train_cternet(CONFIG, RECIPE, *data, tmp_path, RUNTIME)

    outcome, work_dir = trained
    assert resumed.resumed_from_epoch == 3
    assert _without_timing(resumed) == _without_timing(outcome)
    assert resumed.best_epoch == outcome.best_epoch
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        expected = torch.load(work_dir / name, weights_only=True)["model"]
        assert _states_equal(torch.load(tmp_path / name, weights_only=True)["model"], expected)


def test_finished_training_is_not_repeated(trained: tuple[TrainingOutcome, Path],
                                           data: tuple[LabelledImages, LabelledImages]) -> None:
    outcome, work_dir = trained
    again = train_cternet(CONFIG, RECIPE, *data, work_dir, RUNTIME)
    assert again.resumed_from_epoch == RECIPE.epochs
    assert again.history == outcome.history


def test_checkpoint_of_another_training_is_refused(
        trained: tuple[TrainingOutcome, Path], data: tuple[LabelledImages, LabelledImages]) -> None:
    _, work_dir = trained
    with pytest.raises(ValueError, match="different training"):
        train_cternet(CONFIG, dataclasses.replace(RECIPE, lr=0.01), *data, work_dir, RUNTIME)


def test_batch_larger_than_the_training_data_fails_naming_the_key(
        data: tuple[LabelledImages, LabelledImages], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^batch_size"):
        train_cternet(CONFIG, dataclasses.replace(RECIPE, batch_size=64), *data, tmp_path, RUNTIME)


def test_augmentation_depends_on_seed_epoch_and_sample_only(tmp_path: Path) -> None:
    gradient = Image.linear_gradient("L").convert("RGB").resize((64, 48))
    gradient.save(tmp_path / "gradient.png")
    images = LabelledImages((str(tmp_path / "gradient.png"),) * 2, (0, 0))
    dataset = ImageDataset(images, train_transform(CONFIG.input_size, (0.1, 1.0)), seed=5,
                           pixels=cached_pixels(CONFIG))
    first = dataset[2, 0][0]
    torch.manual_seed(123)  # the global RNG (and so loader processes) must not matter
    assert torch.equal(dataset[2, 0][0], first)
    assert not torch.equal(dataset[2, 1][0], first)
    assert not torch.equal(dataset[3, 0][0], first)


@pytest.mark.parametrize(("eval_crop", "side"), [("shorter_side", 32), ("imagenet", 37)])
def test_images_are_cached_at_the_eval_crop_resize_and_the_eval_view_is_exact(
        tmp_path: Path, eval_crop: str, side: int) -> None:
    """The cache holds the shorter side the configured `eval_crop` resizes to, so the model's
    evaluation input is the centre crop of the cached pixels: exactly `eval_geometry`'s crop."""
    config = dataclasses.replace(CONFIG, eval_crop=eval_crop)
    image = Image.linear_gradient("L").convert("RGB").resize((64, 48))
    image.save(tmp_path / "gradient.png")
    assert cached_pixels(config).side == side
    dataset = ImageDataset(LabelledImages((str(tmp_path / "gradient.png"),), (0,)),
                           eval_transform(config), pixels=cached_pixels(config))
    assert dataset.cached(0).shape == (3, side, side * 64 // 48)
    assert torch.equal(dataset[0][0], to_model_pixels(eval_geometry(config)(image)))


def test_sentiment_maps_are_scaled_per_image_and_absent_in_vanilla_mode() -> None:
    crops = [Image.new("RGB", (32, 32), colour) for colour in COLOURS[:2]]
    model = build_cternet(CONFIG, device="cpu").eval()
    maps = sentiment_maps(TrainedClassifier(model, list("abcd"), torch.device("cpu")), crops)
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    vanilla = build_cternet(dataclasses.replace(CONFIG, mode="vanilla"), device="cpu").eval()
    with pytest.raises(ValueError, match="vanilla"):
        sentiment_maps(TrainedClassifier(vanilla, list("abcd"), torch.device("cpu")), crops)

