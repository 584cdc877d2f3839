"""CLIP loading and encoding, checked on a tiny CLIP saved and reloaded through `load_clip`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from affectflow.models.clip import (
    CONFIG_FILENAME,
    WEIGHTS_FILENAME,
    ClipBundle,
    encode_images,
    encode_texts,
    load_clip,
    save_clip,
    text_tower_fingerprint,
    tiny_clip_config,
)
from affectflow.models.encoder_runtime import resolve_device

CONTEXT_LENGTH = 16
TEXTS = [
    "a happy dog running on the beach",
    "grey sky over an empty street",
    "my heart is broken today",
    "",
]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, dict]:
    """A tiny random CLIP kept in memory (the reference) and saved to a directory."""
    torch.manual_seed(0)
    config = tiny_clip_config(image_size=32, patch_size=8, context_length=CONTEXT_LENGTH)
    model = open_clip.CLIP(**config).eval()
    directory = save_clip(model, config, tmp_path_factory.mktemp("tiny_clip"))
    return directory, model, config


@pytest.fixture(scope="module")
def bundle(tiny_clip: tuple[Path, torch.nn.Module, dict]) -> ClipBundle:
    return load_clip(tiny_clip[0], device="cpu")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (32, 32), (50, 64), (33, 47), (64, 20)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _pixels(bundle: ClipBundle, images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([bundle.preprocess(image) for image in images])


def test_directory_round_trip_keeps_weights_and_layout(tiny_clip, bundle: ClipBundle) -> None:
    directory, reference, config = tiny_clip
    assert (directory / WEIGHTS_FILENAME).is_file()
    assert json.loads((directory / CONFIG_FILENAME).read_text())["model_cfg"] == config
    loaded = bundle.model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert bundle.context_length == CONTEXT_LENGTH
    assert bundle.device == torch.device("cpu")
    assert not bundle.model.training
    assert bundle.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))


def test_preprocess_is_open_clips_inference_transform(bundle: ClipBundle, images) -> None:
    expected = open_clip.image_transform(32, is_train=False)
    for image in images:
        pixels = bundle.preprocess(image)
        assert pixels.shape == (3, 32, 32)
        assert torch.equal(pixels, expected(image))


def test_factual_cosine_equals_direct_open_clip(tiny_clip, bundle: ClipBundle, images) -> None:
    reference = tiny_clip[1]
    pixels = _pixels(bundle, images[: len(TEXTS)])
    image_embeddings = encode_images(bundle, pixels)
    text_embeddings, truncated = encode_texts(bundle, TEXTS)
    factual = (image_embeddings * text_embeddings).sum(dim=1)

    with torch.no_grad():
        direct_images = reference.encode_image(pixels, normalize=True)
        direct_texts = reference.encode_text(open_clip.tokenize(TEXTS, CONTEXT_LENGTH), normalize=True)
    direct = (direct_images * direct_texts).sum(dim=1)

    assert image_embeddings.dtype == torch.float32 and text_embeddings.dtype == torch.float32
    torch.testing.assert_close(image_embeddings, direct_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_embeddings, direct_texts, atol=1e-5, rtol=0)
    torch.testing.assert_close(factual, direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(image_embeddings.norm(dim=1), torch.ones(len(TEXTS)))
    assert not truncated.any()


def test_batched_equals_unbatched(bundle: ClipBundle, images) -> None:
    pixels = _pixels(bundle, images)
    batched = encode_images(bundle, pixels)
    one_by_one = torch.cat([encode_images(bundle, pixels[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)

    texts_batched, mask_batched = encode_texts(bundle, TEXTS, batch_size=64)
    texts_single, mask_single = encode_texts(bundle, TEXTS, batch_size=1)
    torch.testing.assert_close(texts_batched, texts_single, atol=1e-5, rtol=0)
    assert torch.equal(mask_batched, mask_single)


def test_truncation_is_reported_not_raised(tiny_clip, bundle: ClipBundle) -> None:
    tokenizer = open_clip.SimpleTokenizer()
    fits_exactly = "a " * (CONTEXT_LENGTH - 2)  # start + 14 words + end = the context length
    one_too_many = "a " * (CONTEXT_LENGTH - 1)
    long_post = "so many feelings about this rainy monday morning " * 10
    assert len(tokenizer.encode(fits_exactly)) + 2 == CONTEXT_LENGTH
    texts = [fits_exactly, one_too_many, long_post, "short", ""]

    embeddings, truncated = encode_texts(bundle, texts, batch_size=2)

    assert truncated.tolist() == [False, True, True, False, False]
    with torch.no_grad():
        direct = tiny_clip[1].encode_text(open_clip.tokenize(texts, CONTEXT_LENGTH), normalize=True)
    torch.testing.assert_close(embeddings, direct, atol=1e-5, rtol=0)


def test_empty_text_list_keeps_embedding_width(bundle: ClipBundle) -> None:
    embeddings, truncated = encode_texts(bundle, [])
    assert embeddings.shape == (0, 64)
    assert truncated.shape == (0,)


def test_encode_rejects_bad_arguments(bundle: ClipBundle) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        encode_texts(bundle, TEXTS, batch_size=0)
    with pytest.raises(TypeError, match="single string"):
        encode_texts(bundle, "one post")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encode_texts(bundle, ["fine", None])
    with pytest.raises(ValueError, match="pixel_batch"):
        encode_images(bundle, torch.zeros(3, 32, 32))


def test_architecture_checkpoint_and_random_init_specs(tiny_clip, tmp_path: Path, caplog) -> None:
    _, reference, config = tiny_clip
    architecture = "affectflow-test-tiny-clip"
    (tmp_path / f"{architecture}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{architecture}.json")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(reference.state_dict(), checkpoint)

    from_checkpoint = load_clip(f"{architecture}:{checkpoint}", device="cpu")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(from_checkpoint.model.state_dict()[name], tensor), name

    with caplog.at_level(logging.WARNING, logger="affectflow.models.clip"):
        random_init = load_clip(architecture, device="cpu")
    assert "randomly initialised" in caplog.text
    assert random_init.context_length == CONTEXT_LENGTH


def test_bad_specs_fail_early_with_the_fix(tiny_clip, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="open_clip architecture"):
        load_clip("NoSuchArchitecture-B-99")
    with pytest.raises(ValueError, match="neither a pretrained tag of ViT-B-32"):
        load_clip("ViT-B-32:no-such-tag")
    with pytest.raises(FileNotFoundError, match=CONFIG_FILENAME):
        load_clip(f"local-dir:{tmp_path}")
    (tmp_path / CONFIG_FILENAME).write_text(json.dumps({"model_cfg": tiny_clip[2]}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_clip(tmp_path)


def test_tiny_config_and_save_validate_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patch_size"):
        tiny_clip_config(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="heads"):
        tiny_clip_config(width=64, heads=3)
    with pytest.raises(ValueError, match="layers"):
        tiny_clip_config(layers=0)
    with pytest.raises(ValueError, match="model_cfg"):
        save_clip(torch.nn.Linear(2, 2), {"embed_dim": 8}, tmp_path)


def test_text_tower_fingerprint_tracks_text_weights_only(tiny_clip) -> None:
    directory = tiny_clip[0]
    first = load_clip(directory, device="cpu")
    second = load_clip(directory, device="cpu")
    assert text_tower_fingerprint(first) == text_tower_fingerprint(second)
    with torch.no_grad():
        second.model.visual.conv1.weight.add_(1.0)
    assert text_tower_fingerprint(first) == text_tower_fingerprint(second)
    with torch.no_grad():
        second.model.token_embedding.weight[0, 0] += 1.0
    assert text_tower_fingerprint(first) != text_tower_fingerprint(second)


def test_device_resolution() -> None:
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device="):
        resolve_device("not-a-device")


def test_a_gpu_index_beyond_the_visible_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="asks for GPU 3 but 1 are visible"):
        resolve_device("cuda:3")
