"""GPU step settings (channels_last, fused optimisers, torch.compile) switched on on a CPU give
the results of the plain step within float tolerance; on a CPU they default off."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import timm
import torch

from affectflow.models.checkpoints import load_torch
from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.train import Runtime, TrainingRecipe, train_cternet
from affectflow.models.pacl.checkpoint import CHECKPOINT_FILE, INITIAL_FILE, load_model
from affectflow.models.pacl.train import train_pacl
from affectflow.models.step_speed import DEFAULT_SPEED, FastStep, StepSpeed, is_convolutional
from tests.models.test_cternet_train import _colour_images
from tests.models.test_pacl_train import config, training_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# What a GPU run turns on by itself, forced here on the CPU; compile through AOT autograd
# without code generation (inductor's C++ build takes minutes on this machine).
GPU_LIKE = StepSpeed(channels_last=True, fused_optimizer=True)
COMPILED = StepSpeed(compile=True, compile_backend="aot_eager")


def test_cnns_are_told_from_transformers_and_a_cpu_step_is_left_as_it_was() -> None:
    cnn = timm.create_model("test_resnet", num_classes=0)
    vit = timm.create_model("test_vit", num_classes=0)
    assert is_convolutional(cnn) and not is_convolutional(vit)
    plain = FastStep(DEFAULT_SPEED, torch.device("cpu"), cnn)
    assert not plain.channels_last and plain.optimizer_options() == {}
    assert plain.compiled(cnn) is cnn
    pixels = torch.rand(2, 3, 8, 8)
    assert plain.inputs(pixels) is pixels
    forced = FastStep(GPU_LIKE, torch.device("cpu"), cnn)
    assert forced.inputs(pixels).is_contiguous(memory_format=torch.channels_last)
    assert next(p for p in cnn.parameters() if p.ndim == 4).is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("speed", [GPU_LIKE, COMPILED], ids=["channels_last+fused", "compiled"])
def test_pacl_training_with_gpu_step_settings_matches_the_plain_step(speed: StepSpeed,
                                                                      tmp_path: Path) -> None:
    data, images = training_set()
    # Small steps, so later steps' weights stay close enough to compare their gradients.
    run = config(epochs=3, accumulation_steps=2, backbone_lr=1e-4, head_lr=1e-3)
    plain = train_pacl(run, data, images, tmp_path / "plain")
    fast = train_pacl(run, data, images, tmp_path / "fast", speed=speed)
    # The first step sees the same weights: its gradient agrees to float rounding. Later steps
    # start from weights that differ by that rounding, which AdamW's normalised updates and
    # the 1/0.07 logit scale amplify a little.
    assert fast.history["grad_norm"][0] == pytest.approx(plain.history["grad_norm"][0], rel=1e-4)
    assert fast.history["loss"] == pytest.approx(plain.history["loss"], rel=1e-3)
    assert fast.history["grad_norm"] == pytest.approx(plain.history["grad_norm"], rel=1e-2)
    reference = plain.model.state_dict()
    for name, tensor in fast.model.state_dict().items():
        torch.testing.assert_close(tensor.float(), reference[name].float(), rtol=1e-2, atol=5e-3,
                                   msg=name)
    # The compiled wrapper leaves the model's own names in the checkpoints.
    assert set(load_torch(tmp_path / "fast" / CHECKPOINT_FILE)["model"]) == set(reference)
    model, _ = load_model(tmp_path / "fast" / INITIAL_FILE)
    assert set(model.state_dict()) == set(reference)


@pytest.mark.parametrize("speed", [GPU_LIKE, COMPILED], ids=["channels_last+fused", "compiled"])
def test_cternet_training_with_gpu_step_settings_matches_the_plain_step(speed: StepSpeed,
                                                                         tmp_path: Path) -> None:
    rng = random.Random(1)
    train, val = _colour_images(tmp_path / "train", 16, rng), _colour_images(tmp_path / "val", 8, rng)
    # smad_f draws no counterfactual noise, so the two runs see the same numbers.
    model = CTERNetConfig(backbone="test_resnet", pretrained=False, input_size=32, num_classes=4,
                          mode="smad_f")
    recipe = TrainingRecipe(epochs=2, batch_size=8, lr=0.05, crop_scale=(0.5, 1.0))
    plain = train_cternet(model, recipe, train, val, tmp_path / "plain", Runtime(device="cpu"))
    fast = train_cternet(model, recipe, train, val, tmp_path / "fast",
                         dataclasses.replace(Runtime(device="cpu"), speed=speed))
    for ours, theirs in zip(fast.history, plain.history):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-3)
        assert ours.val_accuracy == theirs.val_accuracy
