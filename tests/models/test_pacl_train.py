"""PACL training loop on tiny timm encoders and in-memory images: schedule, sampling, lr,
accumulation, clipping, checkpoints and exact resume."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import timm
import torch
from timm.models import register_model

from affectflow.models.checkpoints import save_torch
from affectflow.models.pacl import train as pacl_train
from affectflow.models.pacl.augment import ViewConfig, load_size, train_views
from affectflow.models.pacl.checkpoint import CHECKPOINT_FILE, INITIAL_FILE, load_model, model_record
from affectflow.models.pacl.losses import ALL_PARTITIONS, Partition, active_losses, pacl_loss
from affectflow.models.pacl.sampler import epoch_plan, steps_per_epoch
from affectflow.models.pacl.schedule import WarmupCosine
from affectflow.models.pacl.train import (
    PaclTrainConfig,
    PaclTrainingSet,
    TrainHooks,
    augmentation_boxes,
    schedule_epochs,
    train_pacl,
)

torch.set_num_threads(1)

DROPOUT_NET = "pacl_test_dropout_resnet"


@dataclass
class InMemoryImages:
    """An ImageSource over uint8 squares already in memory."""

    images: torch.Tensor  # (N, 3, side, side) uint8

    def squares(self, batches: Sequence[torch.Tensor], side: int) -> Iterator[torch.Tensor]:
        assert self.images.shape[-1] == side
        for batch in batches:
            yield self.images[batch]


@register_model
def pacl_test_dropout_resnet(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """timm's tiny test ResNet with dropout on its pooled features: training draws from the
    torch RNG, so exact resume also checks that the RNG state is checkpointed."""
    return timm.create_model("test_resnet", drop_rate=0.5, num_classes=kwargs.get("num_classes", 0))


IMAGE_SIZE = 32
SIDE = load_size(IMAGE_SIZE)
# partition sizes: strong 8, partial_emotional 4, partial_factual 6, weak 2
PARTITIONS = [0] * 8 + [1] * 4 + [2] * 6 + [3] * 2


def training_set(seed: int = 0) -> tuple[PaclTrainingSet, InMemoryImages]:
    generator = torch.Generator().manual_seed(seed)
    count = len(PARTITIONS)
    data = PaclTrainingSet(torch.randn(count, 12, generator=generator),
                           torch.tensor(PARTITIONS),
                           torch.randint(0, 2, (count,), generator=generator),
                           torch.randint(0, 3, (count,), generator=generator))
    images = torch.randint(0, 256, (count, 3, SIDE, SIDE), generator=generator, dtype=torch.uint8)
    return data, InMemoryImages(images)


def config(**overrides: Any) -> PaclTrainConfig:
    values: dict[str, Any] = {"visual_encoder": "timm:test_resnet", "pretrained": False,
                              "embed_dim": 8, "image_size": IMAGE_SIZE, "epochs": 3,
                              "samples_per_partition": 2, "backbone_lr": 1e-3, "head_lr": 1e-2}
    return PaclTrainConfig(**{**values, **overrides})


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps a copy of the gradient it is asked to apply at every step."""

    applied: ClassVar[list[torch.Tensor]] = []

    def step(self, closure: Any = None) -> Any:
        grads = [p.grad.flatten() for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        RecordingAdamW.applied.append(torch.cat(grads).clone())
        return super().step(closure)


@pytest.fixture
def recorded_gradients(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    original = pacl_train.build_optimizer

    def recording(*args: Any, **kwargs: Any) -> RecordingAdamW:
        optimizer = original(*args, **kwargs)
        return RecordingAdamW(optimizer.param_groups)

    RecordingAdamW.applied = []
    monkeypatch.setattr(pacl_train, "build_optimizer", recording)
    return RecordingAdamW.applied


# ---------------------------------------------------------------- sampling
def test_batches_hold_equal_counts_of_active_partitions_only() -> None:
    data, _ = training_set()
    for epoch, active in ((0, (Partition.STRONG,)),
                          (1, (Partition.STRONG, Partition.PARTIAL_EMOTIONAL, Partition.PARTIAL_FACTUAL)),
                          (2, tuple(ALL_PARTITIONS))):
        assert active_losses(epoch, 3) == active
        plan = epoch_plan(data.partition, active, per_partition=2, accumulation=1, seed=0, epoch=epoch)
        for micro in plan.reshape(-1, plan.shape[-1]):
            counts = torch.bincount(data.partition[micro], minlength=4)
            assert counts.tolist() == [2 if part in active else 0 for part in ALL_PARTITIONS]


def test_epoch_passes_once_over_the_largest_partition_and_resamples_smaller_ones() -> None:
    data, _ = training_set()
    active = tuple(ALL_PARTITIONS)
    plan = epoch_plan(data.partition, active, per_partition=2, accumulation=1, seed=3, epoch=2)
    assert plan.shape == (4, 1, 8)  # 8 strong samples / 2 per batch = 4 steps
    drawn = plan.flatten()
    strong = drawn[data.partition[drawn] == 0]
    assert sorted(strong.tolist()) == list(range(8))  # every strong sample exactly once
    weak = drawn[data.partition[drawn] == 3]
    assert sorted(torch.bincount(weak).tolist()[18:]) == [4, 4]  # 2 weak samples, 4 passes
    again = epoch_plan(data.partition, active, per_partition=2, accumulation=1, seed=3, epoch=2)
    other_epoch = epoch_plan(data.partition, active, per_partition=2, accumulation=1, seed=3, epoch=1)
    assert torch.equal(plan, again) and not torch.equal(plan, other_epoch)


def test_steps_per_epoch_follow_the_active_partitions() -> None:
    data, _ = training_set()
    assert steps_per_epoch(data.partition, (Partition.STRONG,), 2, 1) == 4
    assert steps_per_epoch(data.partition, (Partition.STRONG,), 2, 2) == 2
    assert steps_per_epoch(data.partition, (Partition.WEAK,), 4, 1) == 1  # never zero
    assert schedule_epochs(data, config(epochs=6)) == [4] * 6


# ---------------------------------------------------------------- schedule and lr
def test_warmup_then_cosine_is_counted_in_optimiser_steps() -> None:
    schedule = WarmupCosine(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.5) and schedule(1) == pytest.approx(1.0)
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(total_steps=4, warmup_steps=4, min_ratio=0.0)


def test_training_switches_losses_by_thirds_and_steps_lr_per_optimiser_step(tmp_path: Path) -> None:
    data, images = training_set()
    run = config(epochs=4, warmup_fraction=0.25, min_lr_ratio=0.0)
    result = train_pacl(run, data, images, tmp_path)
    history = result.history
    assert result.epoch_steps == [4, 4, 4, 4]
    # E = 4: epochs 0-1 are the first third (L1), epoch 2 the second, epoch 3 the last.
    expected = [",".join(p.key for p in active_losses(e, 4)) for e in range(4) for _ in range(4)]
    assert history["active"] == expected
    assert history["epoch"] == [e for e in range(4) for _ in range(4)]
    for partition in ALL_PARTITIONS:
        active = [partition.key in row.split(",") for row in history["active"]]
        values = history[f"loss_{partition.key}"]
        assert all(math.isnan(v) != on for v, on in zip(values, active))
    schedule = WarmupCosine(16, 4, 0.0)
    assert history["lr_heads"] == pytest.approx([1e-2 * schedule(s) for s in range(16)])
    assert history["lr_backbone"] == pytest.approx([1e-3 * schedule(s) for s in range(16)])
    assert history["step"] == list(range(1, 17))


# ---------------------------------------------------------------- accumulation and clipping
def _manual_mean_gradient(run: PaclTrainConfig, data: PaclTrainingSet, images: InMemoryImages,
                          initial: Path) -> tuple[torch.Tensor, float]:
    """Gradient of the mean micro-batch loss of the first step, computed by hand."""
    model, model_config = load_model(initial)
    model.train()
    view = ViewConfig(IMAGE_SIZE, tuple(model_config["mean"]), tuple(model_config["std"]), run.crop_scale)
    active = active_losses(0, run.epochs)
    plan = epoch_plan(data.partition, active, run.samples_per_partition, run.accumulation_steps,
                      run.seed, 0)
    losses = []
    for micro, indices in enumerate(plan[0]):
        boxes = augmentation_boxes(run.seed, micro, len(indices), SIDE, view)
        image_embeddings, text_embeddings = model(train_views(images.images[indices], boxes, view),
                                                  data.text_features[indices])
        total, _ = pacl_loss(image_embeddings, text_embeddings, data.partition[indices],
                             data.factual_cluster[indices], data.emotional_cluster[indices], active,
                             run.weights)
        losses.append(total)
    mean = torch.stack(losses).mean()
    mean.backward()
    gradient = torch.cat([p.grad.flatten() for group in _groups(model) for p in group])
    return gradient, float(mean.detach())


def _groups(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """Parameters in the optimiser's group order (backbone >1-d, backbone 1-d, heads)."""
    visual = list(model.visual.parameters())
    return [[p for p in visual if p.ndim > 1], [p for p in visual if p.ndim <= 1],
            list(model.image_projection.parameters()) + list(model.text_projection.parameters())]


def test_accumulated_step_applies_the_mean_gradient_of_its_micro_batches(
        tmp_path: Path, recorded_gradients: list[torch.Tensor]) -> None:
    data, images = training_set()
    run = config(epochs=1, accumulation_steps=2, samples_per_partition=4, max_grad_norm=None,
                 crop_scale=(0.6, 1.0))
    result = train_pacl(run, data, images, tmp_path)
    assert result.epoch_steps == [1]
    expected, mean_loss = _manual_mean_gradient(run, data, images, tmp_path / INITIAL_FILE)
    torch.testing.assert_close(recorded_gradients[0], expected, rtol=1e-4, atol=1e-6)
    assert result.history["loss"][0] == pytest.approx(mean_loss, rel=1e-5)
    assert result.history["grad_norm"][0] == pytest.approx(float(expected.norm()), rel=1e-4)


def test_gradients_are_clipped_to_the_max_norm_before_the_update(
        tmp_path: Path, recorded_gradients: list[torch.Tensor]) -> None:
    data, images = training_set()
    result = train_pacl(config(epochs=1, max_grad_norm=0.05), data, images, tmp_path)
    for raw_norm, applied in zip(result.history["grad_norm"], recorded_gradients):
        assert raw_norm > 0.05
        assert float(applied.norm()) == pytest.approx(0.05, rel=1e-4)
    unclipped = train_pacl(config(epochs=1, max_grad_norm=None), data, images, tmp_path / "free")
    for raw_norm, applied in zip(unclipped.history["grad_norm"], recorded_gradients[4:]):
        assert float(applied.norm()) == pytest.approx(raw_norm, rel=1e-4)


# ---------------------------------------------------------------- checkpoints and resume
class Interrupt(RuntimeError):
    """The failure a test injects into training."""


def _final_state(result: pacl_train.TrainResult) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()}


def _assert_same_run(resumed: pacl_train.TrainResult, reference: pacl_train.TrainResult) -> None:
    reference_state = _final_state(reference)
    for name, tensor in _final_state(resumed).items():
        torch.testing.assert_close(tensor, reference_state[name], rtol=0, atol=1e-6, msg=name)
    for column in ("loss", "lr_heads", "grad_norm", *[f"loss_{p.key}" for p in ALL_PARTITIONS]):
        assert resumed.history[column] == pytest.approx(reference.history[column], abs=1e-6,
                                                        nan_ok=True), column


def resumable_config() -> PaclTrainConfig:
    return config(visual_encoder=f"timm:{DROPOUT_NET}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> pacl_train.TrainResult:
    data, images = training_set()
    return train_pacl(resumable_config(), data, images, tmp_path_factory.mktemp("reference"))


def test_rerun_after_a_failure_at_an_epoch_end_matches_an_uninterrupted_run(
        tmp_path: Path, reference_run: pacl_train.TrainResult) -> None:
    data, images = training_set()

    def fail_after_first_epoch(epoch: int) -> None:
        if epoch == 0:
            raise Interrupt("injected")

    with pytest.raises(Interrupt):
        train_pacl(resumable_config(), data, images, tmp_path,
                   hooks=TrainHooks(on_epoch_end=fail_after_first_epoch))
    resumed = train_pacl(resumable_config(), data, images, tmp_path)
    assert resumed.resumed_at_step == 4
    _assert_same_run(resumed, reference_run)


def test_keyboard_interrupt_mid_epoch_saves_a_checkpoint_that_resumes_exactly(
        tmp_path: Path, reference_run: pacl_train.TrainResult) -> None:
    data, images = training_set()

    def interrupt(row: dict[str, Any]) -> None:
        if row["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pacl(resumable_config(), data, images, tmp_path, hooks=TrainHooks(on_step=interrupt))
    checkpoint = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["global_step"]) == (1, 2, 6)
    resumed = train_pacl(resumable_config(), data, images, tmp_path)
    assert resumed.resumed_at_step == 6
    _assert_same_run(resumed, reference_run)


def test_checkpoints_load_with_weights_only_and_refuse_another_config(tmp_path: Path) -> None:
    data, images = training_set()
    result = train_pacl(config(epochs=1), data, images, tmp_path)
    for name in (CHECKPOINT_FILE, INITIAL_FILE):
        payload = torch.load(tmp_path / name, weights_only=True)
        assert payload
    save_torch(tmp_path / "model.pt", model_record(result.model, result.model_config))
    loaded, loaded_config = load_model(tmp_path / "model.pt")
    assert loaded_config == result.model_config
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, result.model.state_dict()[name], msg=name)
    with pytest.raises(ValueError, match="another training config"):
        train_pacl(config(epochs=1, head_lr=5e-3), data, images, tmp_path)


def test_inputs_are_validated_with_the_fix_in_the_message() -> None:
    data, images = training_set()
    no_strong = PaclTrainingSet(data.text_features, torch.full((len(data),), 3),
                                data.factual_cluster, data.emotional_cluster)
    with pytest.raises(ValueError, match="no strong-partition samples"):
        train_pacl(config(), no_strong, images, Path("/nonexistent"))
    with pytest.raises(ValueError, match="samples_per_partition"):
        config(samples_per_partition=0)
    with pytest.raises(ValueError, match="partial_factual"):
        config(loss_weights=(1.0, 0.6, -1.0, 0.1))
