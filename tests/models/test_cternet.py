"""CTERNet behaviour: shapes, counterfactuals, precision, eval crops, weight loading, learning, config
checks (the equations themselves: test_cternet_equations.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.data import eval_geometry
from affectflow.models.cternet.model import CTERNetHead, build_cternet
from affectflow.models.cternet.smad import ChannelAttention, counterfactual_attention

TINY_BACKBONE = "test_resnet"  # timm's own tiny test ResNet, built with random weights
TINY_SIZE = 64
LOGGER_NAME = "affectflow.models.cternet.backbone"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides: object) -> CTERNetConfig:
    values: dict[str, object] = dict(
        backbone=TINY_BACKBONE, pretrained=False, input_size=TINY_SIZE, num_classes=4
    )
    values.update(overrides)
    return CTERNetConfig(**values)


def tiny_head(**overrides: object) -> CTERNetHead:
    config = tiny_config(attention_channels=8, branch_channels=16, **overrides)
    return CTERNetHead(in_channels=16, config=config)


def test_res2net101d_at_448_gives_14x14_maps_and_class_logits() -> None:
    model = build_cternet(CTERNetConfig(pretrained=False), device="cpu").eval()
    captured: dict[str, torch.Tensor] = {}
    model.backbone.register_forward_hook(lambda _m, _i, out: captured.setdefault("features", out))
    with torch.no_grad():
        output = model(torch.randn(1, 3, 448, 448))
    assert captured["features"].shape == (1, 2048, 14, 14)
    assert output.logits.shape == (1, 8)
    assert output.detection_logits is not None and output.detection_logits.shape == (1, 8)
    assert output.sentiment_map is not None and output.sentiment_map.shape == (1, 1, 14, 14)
    assert output.attention is not None and output.attention.shape == (1, 32, 14, 14)


@pytest.mark.parametrize("kind", ["paper", "danet"])
def test_channel_attention_is_identity_at_init(kind: str) -> None:
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(ChannelAttention(kind)(x), x)


def test_random_counterfactual_is_uniform_0_2_in_training_and_ones_at_eval() -> None:
    attention = torch.rand(8, 16, 16, 16)
    drawn = counterfactual_attention(attention, "random", training=True)
    assert drawn.shape == attention.shape
    assert drawn.min() >= 0 and drawn.max() < 2
    assert abs(drawn.mean().item() - 1.0) < 0.02
    assert abs(drawn.std().item() - 2 / 12**0.5) < 0.02
    at_eval = counterfactual_attention(attention, "random", training=False)
    assert torch.equal(at_eval, torch.ones_like(attention))


@pytest.mark.parametrize("training", [True, False])
def test_uniform_counterfactual_is_all_ones(training: bool) -> None:
    attention = torch.rand(2, 3, 4, 4)
    counterfactual = counterfactual_attention(attention, "uniform", training)
    assert torch.equal(counterfactual, torch.ones_like(attention))


@pytest.mark.parametrize("training", [True, False])
def test_reversed_counterfactual_is_max_minus_attention_plus_min_per_sample(training: bool) -> None:
    attention = torch.rand(3, 2, 4, 4) * torch.tensor([1.0, 5.0, 10.0]).reshape(3, 1, 1, 1)
    reversed_attention = counterfactual_attention(attention, "reversed", training)
    for sample, maps in zip(reversed_attention, attention):
        torch.testing.assert_close(sample, maps.max() - maps + maps.min())
        assert sample.flatten().argmax() == maps.flatten().argmin()


def test_shuffled_counterfactual_gives_each_sample_another_samples_attention() -> None:
    attention = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 2, 3, 3).contiguous()
    shuffled = counterfactual_attention(attention, "shuffled", training=True)
    sources = shuffled[:, 0, 0, 0].long()
    assert sorted(sources.tolist()) == list(range(6))
    assert all(source != index for index, source in enumerate(sources.tolist()))
    assert torch.equal(shuffled, attention[sources])


def test_shuffled_counterfactual_is_ones_at_eval_and_needs_two_samples_in_training() -> None:
    attention = torch.rand(4, 2, 3, 3)
    at_eval = counterfactual_attention(attention, "shuffled", training=False)
    assert torch.equal(at_eval, torch.ones_like(attention))
    with pytest.raises(ValueError, match="counterfactual"):
        counterfactual_attention(attention[:1], "shuffled", training=True)


@pytest.mark.parametrize("strategy", ["random", "uniform", "reversed", "shuffled"])
def test_counterfactual_path_sends_no_gradient_to_learned_attention(strategy: str) -> None:
    head = tiny_head(counterfactual=strategy).train()
    output = head(torch.randn(4, 16, 4, 4))
    assert output.attention is not None and output.counterfactual_logits is not None
    assert not counterfactual_attention(output.attention, strategy, training=True).requires_grad
    output.counterfactual_logits.sum().backward()
    assert all(p.grad is None for p in head.factual_attention.parameters())
    assert head.classifier.weight.grad is not None and head.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["vanilla", "smad_f", "full"])
def test_ablation_modes_run_forward_and_backward(mode: str) -> None:
    model = build_cternet(tiny_config(mode=mode), device="cpu").train()
    output = model(torch.randn(2, 3, TINY_SIZE, TINY_SIZE), torch.tensor([1, 3]))
    assert output.logits.shape == (2, 4)
    assert output.loss is not None and torch.isfinite(output.loss)
    output.loss.backward()
    assert model.head.classifier.weight.grad is not None
    if mode == "vanilla":
        assert output.detection_logits is None and output.sentiment_map is None
    else:
        assert output.sentiment_map is not None and output.sentiment_map.shape[:2] == (2, 1)
    if mode == "full":
        assert output.counterfactual_logits is not None
    else:
        assert output.counterfactual_logits is None
        assert torch.equal(output.logits, output.factual_logits)


def overfit(config: CTERNetConfig, steps: int = 100) -> torch.Tensor:
    """Train on 8 random images of 4 classes with Adam; the eval-mode predictions after
    `steps` steps, or as soon as all 8 are right."""
    torch.manual_seed(0)
    model = build_cternet(config, device="cpu")
    images = torch.randn(8, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.arange(8) % 4
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    predicted = labels + 1
    for step in range(1, steps + 1):
        model.train()
        output = model(images, labels)
        optimizer.zero_grad()
        assert output.loss is not None
        output.loss.backward()
        optimizer.step()
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                predicted = model(images).logits.argmax(dim=1)
            if torch.equal(predicted, labels):
                break
    return predicted


@pytest.mark.parametrize(("mode", "head"), [("full", "attended"), ("smad_f", "features"),
                                            ("vanilla", "features")])
def test_tiny_cternet_overfits_eight_images(mode: str, head: str) -> None:
    assert torch.equal(overfit(tiny_config(mode=mode, head=head)), torch.arange(8) % 4)


def test_full_mode_with_the_eq5_head_predicts_two_classes_at_most() -> None:
    """Y_TE = w_S * (GAP(S) - GAP(S*)) (test_cternet_equations.py): its argmax is argmax(w_S)
    or argmin(w_S) whatever the image, so 4 classes cannot all be fitted."""
    assert len(set(overfit(tiny_config(mode="full", head="features"), steps=40).tolist())) <= 2


def test_wrong_input_size_is_rejected() -> None:
    model = build_cternet(tiny_config(), device="cpu")
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(1, 3, 32, 32))


def test_backbone_checkpoint_of_same_architecture_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pretrained_tower = timm.create_model(TINY_BACKBONE, pretrained=False)
    path = tmp_path / "pacl_image_tower.pt"
    torch.save(pretrained_tower.state_dict(), path)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        model = build_cternet(tiny_config(pretrained=True, backbone_checkpoint=str(path)), device="cpu")
    assert model.backbone.weights_source == "checkpoint"
    loaded = model.backbone.model.state_dict()
    for key, value in pretrained_tower.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert any("checkpoint" in r.getMessage() and r.name == LOGGER_NAME for r in caplog.records)


def test_backbone_checkpoint_of_other_architecture_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"backbone_checkpoint.*test_resnet"):
        build_cternet(tiny_config(backbone_checkpoint=path), device="cpu")


def test_backbone_checkpoint_must_be_an_existing_state_dict(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="backbone_checkpoint"):
        build_cternet(tiny_config(backbone_checkpoint=tmp_path / "absent.pt"), device="cpu")
    path = tmp_path / "not_a_state_dict.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="backbone_checkpoint"):
        build_cternet(tiny_config(backbone_checkpoint=path), device="cpu")


def test_unreachable_pretrained_weights_fall_back_to_random_init_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        model = build_cternet(tiny_config(pretrained=True), device="cpu")
    assert model.backbone.weights_source == "random"
    warnings = [r for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.WARNING]
    assert warnings and "RANDOM" in warnings[0].getMessage()


def test_backbone_without_feature_map_fails_clearly() -> None:
    model = build_cternet(tiny_config(backbone="test_vit", input_size=160), device="cpu")
    with pytest.raises(ValueError, match="backbone: 'test_vit'"):
        model(torch.randn(1, 3, 160, 160))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backbone", ""),
        ("pretrained", "yes"),
        ("backbone_checkpoint", 3),
        ("num_classes", 1),
        ("k_maps", 0),
        ("counterfactual", "inverted"),
        ("mode", "smadf"),
        ("detection_weight", -1.0),
        ("effect_weight", float("nan")),
        ("input_size", 16),
        ("attention_channels", True),
        ("branch_channels", 2.5),
        ("branch_channels", 24),
        ("sentiment_map", "softmax_sum"),
        ("head", "concat"),
        ("branches", "grouped"),
        ("channel_attention", "cam"),
        ("precision", "fp16"),
        ("eval_crop", "center"),
    ],
)
def test_invalid_config_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        tiny_config(**{field: value})


def test_config_rejects_zero_weight_for_the_only_active_loss_term() -> None:
    with pytest.raises(ValueError, match="effect_weight"):
        tiny_config(mode="vanilla", effect_weight=0.0)
    with pytest.raises(ValueError, match="detection_weight, effect_weight"):
        tiny_config(detection_weight=0.0, effect_weight=0.0)


def test_config_from_mapping_rejects_unknown_keys() -> None:
    config = CTERNetConfig.from_mapping({"backbone": "resnet18", "pretrained": False, "k_maps": 2})
    assert config.k_maps == 2 and config.counterfactual == "random"
    with pytest.raises(ValueError, match=r"^kmaps: unknown"):
        CTERNetConfig.from_mapping({"kmaps": 4})


def test_saved_config_must_name_every_key() -> None:
    """A model folder from before a key existed must not silently get today's default."""
    values = {"backbone": "resnet18", "pretrained": False}
    with pytest.raises(ValueError, match="missing from the saved CTERNet config"):
        CTERNetConfig.from_mapping(values, complete=True)
    full = {field: getattr(tiny_config(), field) for field in CTERNetConfig.__dataclass_fields__}
    assert CTERNetConfig.from_mapping(full, complete=True) == tiny_config()


def test_psa_branches_need_a_backbone_width_divisible_by_their_groups() -> None:
    with pytest.raises(ValueError, match="branches: the backbone's 20 channels"):
        CTERNetHead(in_channels=20, config=tiny_config(branch_channels=16))
    CTERNetHead(in_channels=20, config=tiny_config(branches="conv_bn_relu", branch_channels=4))


@pytest.mark.parametrize("head", ["features", "attended"])
def test_classifier_reads_one_sentiment_channel_and_the_features(head: str) -> None:
    """Eq. 5 concat(S, X) reads all backbone channels; the attended head the reduced ones."""
    model = build_cternet(tiny_config(head=head), device="cpu")
    expected = model.backbone.out_channels if head == "features" else 32
    assert model.head.classifier.in_features == 1 + expected
    assert hasattr(model.head, "reduce") == (head == "attended")


def test_precision_bf16_autocasts_and_fp32_overrides_a_callers_autocast() -> None:
    """The CPU twin of the GPU path: the switch is the model's, on any device."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    fp32 = build_cternet(tiny_config(), device="cpu").eval()
    bf16 = build_cternet(tiny_config(precision="bf16"), device="cpu").eval()
    bf16.load_state_dict(fp32.state_dict())
    with torch.no_grad():
        full = fp32(images)
        half = bf16(images)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            inside = fp32(images)
    assert full.logits.dtype == torch.float32 and inside.logits.dtype == torch.float32
    assert half.logits.dtype == torch.bfloat16
    torch.testing.assert_close(inside.logits, full.logits)
    torch.testing.assert_close(half.logits.float(), full.logits, atol=0.05, rtol=0.05)
    assert not torch.equal(half.logits.float(), full.logits)
    labels = torch.tensor([0, 1])
    loss = bf16.train()(images, labels).loss
    assert loss is not None and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_eval_crops_keep_the_whole_shorter_side_or_drop_its_outer_eighth() -> None:
    """A 200x100 image whose top and bottom 4 rows are red: `shorter_side` (public code) keeps
    them, `imagenet` (resize to side / 0.875, centre crop) cuts them off."""
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    for y in (*range(4), *range(96, 100)):
        for x in range(200):
            image.putpixel((x, y), (255, 0, 0))
    shorter = np.asarray(eval_geometry(tiny_config(eval_crop="shorter_side"))(image))
    imagenet = np.asarray(eval_geometry(tiny_config(eval_crop="imagenet"))(image))
    assert shorter.shape == imagenet.shape == (TINY_SIZE, TINY_SIZE, 3)
    assert shorter[0, :, 0].min() > 200 and shorter[-1, :, 0].min() > 200
    assert imagenet[0, :, 0].max() < 60 and imagenet[-1, :, 0].max() < 60
