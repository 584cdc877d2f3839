"""CTERNet behaviour: shapes, attention formulas, counterfactuals, loss, weight loading, learning."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn.functional as F

from affectflow.models.cternet.config import CTERNetConfig
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
    config = tiny_config(attention_channels=8, branch_channels=4, **overrides)
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


def test_channel_attention_is_identity_at_init() -> None:
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(ChannelAttention()(x), x)


def test_channel_attention_matches_formula_for_random_gamma() -> None:
    cam = ChannelAttention()
    with torch.no_grad():
        cam.gamma.fill_(0.37)
    x = torch.randn(2, 6, 5, 5) * 0.3
    flat = x.reshape(2, 6, 25)
    attention = torch.softmax(torch.einsum("bcn,bdn->bcd", flat, flat), dim=-1)
    expected = 0.37 * torch.einsum("bcd,bdn->bcn", attention, flat).reshape(2, 6, 5, 5) + x
    torch.testing.assert_close(cam(x), expected)


def test_total_effect_is_factual_minus_counterfactual() -> None:
    head = tiny_head(counterfactual="uniform").eval()
    features = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        output = head(features)
        assert output.attention is not None
        _, counterfactual_map = head.pooling(torch.ones_like(output.attention))
        reduced = head.reduce(features)
        pooled = torch.cat([counterfactual_map, counterfactual_map * reduced], dim=1).mean(dim=(2, 3))
        counterfactual = head.classifier(pooled)
    torch.testing.assert_close(output.counterfactual_logits, counterfactual)
    torch.testing.assert_close(output.logits, output.factual_logits - counterfactual)
    assert not torch.allclose(output.logits, counterfactual - output.factual_logits)


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


def test_loss_weighs_detection_and_effect_terms() -> None:
    head = tiny_head(detection_weight=0.3, effect_weight=2.0).train()
    labels = torch.tensor([0, 1, 2, 3])
    output = head(torch.randn(4, 16, 4, 4), labels)
    assert output.detection_logits is not None and output.loss is not None
    expected = 0.3 * F.cross_entropy(output.detection_logits, labels) + 2.0 * F.cross_entropy(
        output.logits, labels
    )
    torch.testing.assert_close(output.loss, expected)


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


def test_tiny_cternet_overfits_eight_images() -> None:
    torch.manual_seed(0)
    model = build_cternet(tiny_config(), device="cpu")
    images = torch.randn(8, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.arange(8) % 4
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracy = 0.0
    for step in range(1, 101):
        model.train()
        output = model(images, labels)
        optimizer.zero_grad()
        assert output.loss is not None
        output.loss.backward()
        optimizer.step()
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(images).logits.argmax(dim=1) == labels).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0


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
        ("backbone", "no_such_net"),
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
