"""PACL two-tower model and visual encoder specs, on tiny timm / open_clip models built offline."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import timm
import torch

from affectflow.models.pacl.model import (
    PaclModel,
    PretrainedWeightsError,
    VisualSpec,
    build_pacl_model,
    build_visual_encoder,
    parse_visual_spec,
)

torch.set_num_threads(2)

TINY_VIT = "affectflow-test-tiny-vit"
TINY_TIMM_TOWER = "affectflow-test-tiny-timm-tower"
TINY_TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}


def tiny_vit_config() -> dict:
    return {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": TINY_TEXT_CFG,
    }


def tiny_timm_tower_config() -> dict:
    """A timm trunk inside open_clip; its tower declares no output_dim, so the width is probed."""
    return {
        "embed_dim": 20,
        "vision_cfg": {"timm_model_name": "resnet10t", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 32},
        "text_cfg": TINY_TEXT_CFG,
    }


@pytest.fixture(scope="module", autouse=True)
def tiny_open_clip_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Register the tiny architectures with open_clip, as a user registers a custom config."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, config in ((TINY_VIT, tiny_vit_config()), (TINY_TIMM_TOWER, tiny_timm_tower_config())):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


# ---------------------------------------------------------------- spec parsing
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("timm:resnet50", VisualSpec("timm", "resnet50")),
        ("timm:vit_base_patch16_224", VisualSpec("timm", "vit_base_patch16_224")),
        ("timm:resnet18:/ckpt/resnet18.pth", VisualSpec("timm", "resnet18", "/ckpt/resnet18.pth")),
        ("timm:hf-hub:timm/resnet50.a1_in1k", VisualSpec("timm", "hf-hub:timm/resnet50.a1_in1k")),
        ("open_clip:ViT-B-32", VisualSpec("open_clip", "ViT-B-32")),
        ("open_clip:ViT-B-32:openai", VisualSpec("open_clip", "ViT-B-32", "openai")),
        ("open_clip:RN50:/ckpt/clip.pt", VisualSpec("open_clip", "RN50", "/ckpt/clip.pt")),
        ("open_clip:local-dir:/models/clip", VisualSpec("open_clip", "local-dir:/models/clip")),
    ],
)
def test_parse_visual_spec(spec: str, expected: VisualSpec) -> None:
    assert parse_visual_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet50", "no family prefix"),
        ("torchvision:resnet50", "unknown family"),
        ("timm:", "no model name"),
        ("open_clip::openai", "no model name"),
        ("timm:hf-hub:", "no model name"),
    ],
)
def test_bad_specs_raise_value_error_with_usage(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_visual_spec(spec)
    assert "timm:<name>" in str(error.value)


def test_unknown_models_and_missing_weights_fail_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timm has no model"):
        build_visual_encoder("timm:not_a_real_net", pretrained=False)
    with pytest.raises(ValueError, match="open_clip has no architecture"):
        build_visual_encoder("open_clip:Not-An-Arch", pretrained=False)
    with pytest.raises(ValueError, match="names no pretrained weights"):
        build_visual_encoder(f"open_clip:{TINY_VIT}", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_visual_encoder(f"timm:resnet18:{tmp_path / 'missing.pth'}", pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="pretrained=False"):
        build_visual_encoder(f"open_clip:{TINY_VIT}:no_such_tag", pretrained=True)


# ---------------------------------------------------------------- timm towers
def test_timm_resnet18_two_towers_shapes_and_normalisation() -> None:
    model, backbone = build_pacl_model("timm:resnet18", text_dim=12, embed_dim=16, pretrained=False)
    assert backbone.feature_dim == 512
    assert backbone.image_size == (224, 224) and len(backbone.mean) == 3 and len(backbone.std) == 3
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.backbone_features(images)
        image_embeddings, text_embeddings = model(images, torch.randn(3, 12))
    assert features.shape == (3, 512)
    assert image_embeddings.shape == (3, 16) and text_embeddings.shape == (3, 16)
    torch.testing.assert_close(image_embeddings.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_embeddings.norm(dim=-1), torch.ones(3))
    assert model.image_projection.bias is None and model.text_projection.bias is None
    assert model.logit_scale.item() == pytest.approx(1 / 0.07)


def test_timm_checkpoint_file_round_trips_through_the_loader(tmp_path: Path) -> None:
    """A full classifier checkpoint loads; its classifier is dropped because num_classes=0."""
    saved = timm.create_model("resnet18", pretrained=False)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(saved.state_dict(), checkpoint)
    backbone = build_visual_encoder(f"timm:resnet18:{checkpoint}", pretrained=True)
    loaded = backbone.module.state_dict()
    assert "fc.weight" not in loaded
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved.state_dict()[key], msg=key)


# ---------------------------------------------------------------- open_clip towers
def test_open_clip_tiny_vit_tower_shapes() -> None:
    model, backbone = build_pacl_model(f"open_clip:{TINY_VIT}", text_dim=10, embed_dim=8, pretrained=False)
    assert backbone.feature_dim == 24 and backbone.image_size == (32, 32)
    model.eval()
    with torch.no_grad():
        features = model.backbone_features(torch.randn(2, 3, 32, 32))
        image_embeddings, text_embeddings = model(torch.randn(2, 3, 32, 32), torch.randn(2, 10))
    assert features.shape == (2, 24)
    assert image_embeddings.shape == (2, 8) and text_embeddings.shape == (2, 8)
    torch.testing.assert_close(image_embeddings.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(text_embeddings.norm(dim=-1), torch.ones(2))


def test_open_clip_timm_trunk_width_is_probed() -> None:
    backbone = build_visual_encoder(f"open_clip:{TINY_TIMM_TOWER}", pretrained=False)
    assert backbone.feature_dim == 20
    assert backbone.module.training


def test_open_clip_checkpoint_file_and_local_dir_round_trip(tmp_path: Path) -> None:
    saved = open_clip.create_model(TINY_VIT)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(saved.state_dict(), checkpoint)
    local_dir = tmp_path / "tiny_dir"
    local_dir.mkdir()
    (local_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_vit_config()}))
    torch.save(saved.state_dict(), local_dir / "open_clip_pytorch_model.bin")
    expected = saved.visual.state_dict()
    for spec in (f"open_clip:{TINY_VIT}:{checkpoint}", f"open_clip:local-dir:{local_dir}"):
        loaded = build_visual_encoder(spec, pretrained=True).module.state_dict()
        assert loaded.keys() == expected.keys()
        for key, value in loaded.items():
            torch.testing.assert_close(value, expected[key], msg=f"{spec}: {key}")


def test_random_init_ignores_weights_named_in_the_spec(tmp_path: Path) -> None:
    saved = open_clip.create_model(TINY_VIT)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(saved.state_dict(), checkpoint)
    loaded = build_visual_encoder(f"open_clip:{TINY_VIT}:{checkpoint}", pretrained=False).module
    assert not torch.equal(loaded.conv1.weight, saved.visual.conv1.weight)


# ---------------------------------------------------------------- zero-shot prompts and validation
def test_prompt_ensembles_average_normalised_prompt_embeddings() -> None:
    model = PaclModel(torch.nn.Identity(), visual_dim=6, text_dim=5, embed_dim=4)
    prompts = torch.randn(3, 2, 5)
    classes = model.encode_prompts(prompts)
    per_prompt = model.encode_text(prompts)
    expected = torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)
    torch.testing.assert_close(classes, expected)
    torch.testing.assert_close(model.encode_prompts(prompts[:, 0]), per_prompt[:, 0])
    with pytest.raises(ValueError, match="prompt_features"):
        model.encode_prompts(torch.randn(5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"embed_dim": 0}, "embed_dim"), ({"text_dim": -1}, "text_dim"), ({"temperature": 0.0}, "temperature")],
)
def test_model_arguments_are_validated(kwargs: dict, message: str) -> None:
    arguments = {"visual": torch.nn.Identity(), "visual_dim": 4, "text_dim": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        PaclModel(**arguments)
