"""Captioners: tiny BLIP / InstructBLIP models saved to disk and loaded back through `load_captioner`."""

from __future__ import annotations

import pickle
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image

from affectflow.models.captioner import (
    BLIP_GENERATION,
    GENERATION_KEYS,
    KCDP_GENERATION,
    KCDP_PROMPT,
    CaptionBatch,
    build_tiny_blip,
    build_tiny_instructblip,
    load_captioner,
    validate_generation,
)
from tests.models.colour_captioners import COLOURS, colour_image, colour_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = {"num_beams": 2, "max_new_tokens": 8, "min_new_tokens": 2}


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def gradient(size: tuple[int, int] = (36, 28)) -> Image.Image:
    ramp = np.linspace(0, 255, size[0], dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (size[1], 1))] * 3, axis=-1)
    return Image.fromarray(pixels)


IMAGES = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), gradient()]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip"), seed=0)


@pytest.fixture(scope="module")
def blip(blip_dir: Path):
    return load_captioner("blip", str(blip_dir), **FAST)


@pytest.fixture(scope="module")
def instructblip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_instructblip(tmp_path_factory.mktemp("instructblip"), seed=0)


def test_blip_directory_holds_model_and_processor(blip_dir: Path) -> None:
    names = {path.name for path in blip_dir.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= names


def test_blip_captions_one_string_per_image(blip) -> None:
    captions = blip.caption(IMAGES)
    assert len(captions) == len(IMAGES)
    assert all(isinstance(text, str) and text.strip() for text in captions)
    assert all(text == " ".join(text.split()) for text in captions)


def test_blip_captions_are_deterministic_and_depend_on_the_image(blip) -> None:
    first = blip.caption(IMAGES)
    assert blip.caption(IMAGES) == first
    assert len(set(first)) > 1


def test_blip_batch_equals_one_at_a_time(blip) -> None:
    assert blip.caption(IMAGES) == [blip.caption([image])[0] for image in IMAGES]


def test_same_seed_builds_the_same_captioner(blip, tmp_path: Path) -> None:
    again = load_captioner("blip", str(build_tiny_blip(tmp_path / "again", seed=0)), **FAST)
    assert again.caption(IMAGES) == blip.caption(IMAGES)


def test_other_image_modes_are_captioned_as_rgb(blip) -> None:
    rgb = gradient()
    gray = rgb.convert("L")
    assert blip.caption([rgb.convert("RGBA"), gray]) == blip.caption([rgb, gray.convert("RGB")])


def test_empty_input_gives_no_captions(blip) -> None:
    assert blip.preprocess([]).size == 0
    assert blip.caption([]) == []


def test_preprocess_is_a_cpu_batch_that_survives_pickling(blip) -> None:
    batch = blip.preprocess(IMAGES[:2])
    assert batch.size == 2
    assert batch.features["pixel_values"].shape == (2, 3, 32, 32)
    assert all(value.device.type == "cpu" for value in batch.features.values())
    worker_copy = pickle.loads(pickle.dumps(blip.preprocessor))
    again = worker_copy(IMAGES[:2])
    assert torch.equal(again.features["pixel_values"], batch.features["pixel_values"])


def test_preprocessing_overlapped_with_generation_gives_the_same_captions(blip) -> None:
    chunks = [IMAGES[:2], IMAGES[2:]]
    captions: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(blip.preprocess, chunks[0])
        for next_chunk in [*chunks[1:], None]:
            batch: CaptionBatch = pending.result()
            if next_chunk is not None:
                pending = pool.submit(blip.preprocess, next_chunk)
            captions += blip.generate(batch)
    assert captions == blip.caption(IMAGES)


def test_blip_prompt_prefixes_the_caption(blip_dir: Path) -> None:
    captioner = load_captioner("blip", str(blip_dir), prompt="a photo of", **FAST)
    assert all(text.startswith("a photo of") for text in captioner.caption(IMAGES[:2]))


def test_generation_settings_reach_the_model(blip_dir: Path) -> None:
    short = load_captioner("blip", str(blip_dir), num_beams=1, max_new_tokens=3, min_new_tokens=0)
    assert short.generation == {**BLIP_GENERATION, "num_beams": 1, "max_new_tokens": 3, "min_new_tokens": 0}
    assert all(len(text.split()) <= 3 for text in short.caption(IMAGES))
    assert "max_new_tokens=3" in short.spec and short.spec.startswith(f"blip:{blip_dir}")


def test_blip_defaults_follow_the_blip_paper(blip_dir: Path) -> None:
    captioner = load_captioner("blip", str(blip_dir))
    assert captioner.prompt is None
    assert captioner.generation == BLIP_GENERATION
    assert captioner.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not captioner.model.training


def test_instructblip_uses_the_kcdp_prompt_and_settings(instructblip_dir: Path) -> None:
    captioner = load_captioner("instructblip", str(instructblip_dir))
    assert captioner.prompt == KCDP_PROMPT
    assert captioner.generation == KCDP_GENERATION
    captions = captioner.caption(IMAGES[:2])
    assert len(captions) == 2 and all(isinstance(text, str) and text for text in captions)
    assert captioner.caption(IMAGES[:2]) == captions


def test_instructblip_batch_equals_one_at_a_time(instructblip_dir: Path) -> None:
    captioner = load_captioner("instructblip", str(instructblip_dir), **FAST)
    batch = captioner.preprocess(IMAGES[:3])
    assert {"qformer_input_ids", "input_ids", "pixel_values"} <= set(batch.features)
    assert captioner.generate(batch) == [captioner.caption([image])[0] for image in IMAGES[:3]]


def test_instructblip_custom_prompt(instructblip_dir: Path) -> None:
    captioner = load_captioner("instructblip", str(instructblip_dir), prompt="Describe the emotion.", **FAST)
    assert captioner.prompt == "Describe the emotion."
    assert "Describe the emotion." in captioner.spec
    assert len(captioner.caption(IMAGES[:1])) == 1


def test_unknown_kind_is_rejected(blip_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown captioner kind 'git'.*blip.*instructblip"):
        load_captioner("git", str(blip_dir))


@pytest.mark.parametrize("name", ["/nonexistent/tiny-blip", "./no-such-captioner", "runs/a/b"])
def test_missing_directory_is_rejected(name: str) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_captioner("blip", name)


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        load_captioner("blip", str(tmp_path))


def test_unreachable_hub_id_names_the_offline_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="local directory"):
        load_captioner("blip", "affectflow-tests/no-such-captioner")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 0.7}, "unknown generation setting"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1"),
        ({"num_beams": 2.5}, "num_beams must be an integer"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
        ({"min_new_tokens": -1}, "min_new_tokens must be an integer >= 0"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a number > 0"),
        ({"min_new_tokens": 9, "max_new_tokens": 4}, "must not exceed max_new_tokens"),
    ],
)
def test_bad_generation_settings_are_rejected(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_generation(settings)


def test_bad_generation_settings_fail_before_loading() -> None:
    with pytest.raises(ValueError, match="num_beams"):
        load_captioner("instructblip", "/nonexistent/model", num_beams=-1)


@pytest.mark.parametrize("prompt", ["", "   ", 3])
def test_bad_prompt_is_rejected(blip_dir: Path, prompt: object) -> None:
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        load_captioner("blip", str(blip_dir), prompt=prompt)  # type: ignore[arg-type]


def test_non_image_input_is_rejected(blip) -> None:
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL.Image.Image"):
        blip.preprocess([IMAGES[0], np.zeros((4, 4, 3))])


def test_bad_seed_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be an integer"):
        build_tiny_blip(tmp_path, seed="0")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's error")
def test_cuda_request_without_gpu_is_rejected(blip_dir: Path) -> None:
    with pytest.raises(ValueError, match="no GPU is visible"):
        load_captioner("blip", str(blip_dir), device="cuda")


# --- trained tiny captioners: captions that depend on the image -----------------------------


@pytest.fixture(params=["blip", "instructblip"])
def trained(request: pytest.FixtureRequest, colour_captioners: dict[str, Path]) -> tuple[str, Path]:
    return request.param, colour_captioners[request.param]


def colour_batch(seed: int, repeats: int = 3) -> tuple[list[str], list[Image.Image]]:
    rng = random.Random(seed)
    names = [name for _ in range(repeats) for name in COLOURS]
    rng.shuffle(names)
    return names, [colour_image(name, rng) for name in names]


def test_trained_captioners_name_the_colour_of_each_unseen_image(trained: tuple[str, Path]) -> None:
    kind, folder = trained
    names, images = colour_batch(seed=5)
    captions = load_captioner(kind, str(folder), **FAST).caption(images)
    assert [colour_of(caption) for caption in captions] == names, captions


def test_batching_keeps_each_caption_with_its_image(trained: tuple[str, Path]) -> None:
    """Uneven batches prepared on a worker thread while the previous one generates, in shuffled
    and reversed order: every caption still names its own image's colour."""
    kind, folder = trained
    captioner = load_captioner(kind, str(folder), **FAST)
    names, images = colour_batch(seed=9)
    for order in (list(range(len(images))), list(reversed(range(len(images))))):
        chunks = [order[:5], order[5:6], order[6:]]
        captions: list[str] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(captioner.preprocess, [images[i] for i in chunk]) for chunk in chunks]
            for future in pending:
                captions += captioner.generate(future.result())
        assert [colour_of(caption) for caption in captions] == [names[i] for i in order]


def test_kcdp_prompt_and_generation_settings_reach_generate(colour_captioners: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """InstructBLIP's defaults as `generate` receives them: num_beams 5, repetition_penalty 5.0,
    max_new_tokens 50, min_new_tokens 30, and the KCDP prompt's tokens for every image."""
    captioner = load_captioner("instructblip", str(colour_captioners["instructblip"]))
    calls: list[dict] = []
    original = captioner.model.generate

    def recording(**kwargs: object) -> torch.Tensor:
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(captioner.model, "generate", recording)
    names, images = colour_batch(seed=2, repeats=1)
    captions = captioner.caption(images)
    assert len(calls) == 1
    assert {key: calls[0][key] for key in GENERATION_KEYS} == {
        "num_beams": 5, "repetition_penalty": 5.0, "max_new_tokens": 50, "min_new_tokens": 30}
    processor = captioner.preprocessor.processor
    expected = processor(images=images, text=[KCDP_PROMPT] * len(images), return_tensors="pt")
    for name in ("input_ids", "qformer_input_ids"):
        assert torch.equal(calls[0][name], expected[name])
    assert processor.qformer_tokenizer.decode(calls[0]["qformer_input_ids"][0],
                                              skip_special_tokens=True) == KCDP_PROMPT.lower()
    assert [colour_of(caption) for caption in captions] == names
    assert all(len(processor.tokenizer(caption)["input_ids"]) >= 30 for caption in captions)
