"""Zero-shot ANP scorer on a tiny CLIP saved and reloaded through `load_clip`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from affectflow.models import anp as anp_module
from affectflow.models.anp import AnpScorer, load_anp_vocabulary
from affectflow.models.clip import ClipBundle, encode_images, load_clip, save_clip, tiny_clip_config

CONTEXT_LENGTH = 16
TWO_TEMPLATES = ("a photo of {}.", "an image that shows {}.")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = tiny_clip_config(image_size=32, patch_size=8, context_length=CONTEXT_LENGTH)
    return save_clip(open_clip.CLIP(**config).eval(), config, tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def bundle(tiny_clip_dir: Path) -> ClipBundle:
    return load_clip(tiny_clip_dir, device="cpu")


@pytest.fixture(scope="module")
def vocabulary() -> list[str]:
    return load_anp_vocabulary()[:40]


@pytest.fixture(scope="module")
def image_embeddings(bundle: ClipBundle) -> torch.Tensor:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)) for _ in range(6)]
    return encode_images(bundle, torch.stack([bundle.preprocess(image) for image in images]))


def clear_anp_memory_cache() -> None:
    """Forget the in-process ANP embeddings, as a new process would (disk caches are kept)."""
    anp_module._memory_cache.clear()


@pytest.fixture(autouse=True)
def fresh_memory_cache() -> Iterator[None]:
    clear_anp_memory_cache()
    yield
    clear_anp_memory_cache()


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the CLIP text-encoding calls the scorer makes (one per template when computing)."""
    calls: list[int] = []
    real_encode_texts = anp_module.encode_texts

    def counting_encode_texts(*args, **kwargs):
        calls.append(1)
        return real_encode_texts(*args, **kwargs)

    monkeypatch.setattr(anp_module, "encode_texts", counting_encode_texts)
    return calls


def test_packaged_vocabulary_is_the_mvso_list() -> None:
    vocabulary = load_anp_vocabulary()
    assert len(vocabulary) == 4342
    assert len(set(vocabulary)) == 4342
    assert vocabulary[0] == "old_city"
    assert all(anp.count("_") == 1 for anp in vocabulary)


def test_vocabulary_file_validation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good.txt"
    good.write_text("  happy_dog \n\nsad_cat\nhappy_dog\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="affectflow.models.anp"):
        assert load_anp_vocabulary(good) == ["happy_dog", "sad_cat"]
    assert "dropped 1 duplicate" in caplog.text

    for content, line in (("happy_dog\nsad cat\n", 2), ("happy_dog\n\nold_red_car\n", 3), ("nounderscore\n", 1)):
        bad = tmp_path / "bad.txt"
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=f"line {line}:"):
            load_anp_vocabulary(bad)

    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no ANPs"):
        load_anp_vocabulary(empty)


def _brute_force_anp_embeddings(bundle: ClipBundle, vocabulary: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """One ANP at a time, straight through open_clip: mean of normalised prompts, renormalised."""
    rows = []
    with torch.no_grad():
        for anp in vocabulary:
            prompts = [template.format(anp.replace("_", " ")) for template in templates]
            prompt_embeddings = bundle.model.encode_text(open_clip.tokenize(prompts, CONTEXT_LENGTH), normalize=True)
            mean = prompt_embeddings.mean(dim=0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_top_k_equals_brute_force(bundle: ClipBundle, vocabulary, image_embeddings) -> None:
    scorer = AnpScorer(bundle, vocabulary, templates=TWO_TEMPLATES)
    expected_text = _brute_force_anp_embeddings(bundle, vocabulary, TWO_TEMPLATES)
    torch.testing.assert_close(scorer.text_embeddings, expected_text, atol=1e-5, rtol=0)

    cosine = torch.tensor([[float(image @ text) for text in expected_text] for image in image_embeddings])
    expected_order = torch.argsort(cosine, dim=1, descending=True)[:, :3]

    indices, scores, anp_texts = scorer.top_k(image_embeddings, k=3)
    assert torch.equal(indices, expected_order)
    torch.testing.assert_close(scores, cosine.gather(1, expected_order), atol=1e-5, rtol=0)
    assert anp_texts == [[vocabulary[i].replace("_", " ") for i in row] for row in expected_order.tolist()]

    probabilities = torch.softmax(bundle.logit_scale * cosine, dim=1)
    softmax_matches = scorer.top_k(image_embeddings, k=3, score="softmax")
    assert torch.equal(softmax_matches.indices, expected_order)
    torch.testing.assert_close(softmax_matches.scores, probabilities.gather(1, expected_order), atol=1e-5, rtol=0)


def test_top_k_of_no_images_is_empty(bundle: ClipBundle, vocabulary) -> None:
    matches = AnpScorer(bundle, vocabulary).top_k(torch.empty(0, 64), k=3)
    assert matches.indices.shape == (0, 3) and matches.scores.shape == (0, 3) and matches.anp_texts == []


def test_disk_and_memory_cache_skip_recomputation(
    bundle: ClipBundle, vocabulary, tmp_path: Path, encode_calls: list[int]
) -> None:
    first = AnpScorer(bundle, vocabulary, cache_dir=tmp_path)
    assert len(encode_calls) == 1
    assert len(list(tmp_path.glob("anp-text-*.safetensors"))) == 1

    clear_anp_memory_cache()
    from_disk = AnpScorer(bundle, vocabulary, cache_dir=tmp_path)
    from_memory = AnpScorer(bundle, vocabulary)
    assert len(encode_calls) == 1
    torch.testing.assert_close(from_disk.text_embeddings, first.text_embeddings, atol=0, rtol=0)
    torch.testing.assert_close(from_memory.text_embeddings, first.text_embeddings, atol=0, rtol=0)


def test_changed_templates_vocabulary_or_weights_recompute(
    tiny_clip_dir: Path, bundle: ClipBundle, vocabulary, tmp_path: Path, encode_calls: list[int]
) -> None:
    base = AnpScorer(bundle, vocabulary, cache_dir=tmp_path)
    assert len(encode_calls) == 1

    two_templates = AnpScorer(bundle, vocabulary, templates=TWO_TEMPLATES, cache_dir=tmp_path)
    assert len(encode_calls) == 3
    assert two_templates.cache_key != base.cache_key

    AnpScorer(bundle, vocabulary[:20], cache_dir=tmp_path)
    assert len(encode_calls) == 4

    retrained = load_clip(tiny_clip_dir, device="cpu")
    with torch.no_grad():
        retrained.model.text_projection.mul_(2.0)
    same_spec_new_weights = AnpScorer(retrained, vocabulary, cache_dir=tmp_path)
    assert len(encode_calls) == 5
    assert same_spec_new_weights.cache_key != base.cache_key
    assert len(list(tmp_path.glob("anp-text-*.safetensors"))) == 4


def test_unreadable_cache_file_is_recomputed(
    bundle: ClipBundle, vocabulary, tmp_path: Path, encode_calls: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    first = AnpScorer(bundle, vocabulary, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("anp-text-*.safetensors")
    cache_file.write_bytes(b"not a safetensors file")
    clear_anp_memory_cache()

    with caplog.at_level(logging.WARNING, logger="affectflow.models.anp"):
        again = AnpScorer(bundle, vocabulary, cache_dir=tmp_path)

    assert "unreadable ANP cache" in caplog.text
    assert len(encode_calls) == 2
    torch.testing.assert_close(again.text_embeddings, first.text_embeddings, atol=0, rtol=0)
    clear_anp_memory_cache()
    AnpScorer(bundle, vocabulary, cache_dir=tmp_path)
    assert len(encode_calls) == 2


def test_scorer_argument_validation(bundle: ClipBundle, vocabulary, image_embeddings) -> None:
    with pytest.raises(ValueError, match="vocabulary must be a non-empty"):
        AnpScorer(bundle, [])
    with pytest.raises(ValueError, match=r"vocabulary\[1\]"):
        AnpScorer(bundle, ["happy_dog", "sad cat"])
    for templates, message in (
        ((), "non-empty"),
        (("a photo",), "exactly one"),
        (("{} and {}",), "exactly one"),
        (("{mood} photo of {}",), "other braces"),
    ):
        with pytest.raises(ValueError, match=message):
            AnpScorer(bundle, vocabulary, templates=templates)

    scorer = AnpScorer(bundle, vocabulary)
    with pytest.raises(ValueError, match="k must be"):
        scorer.top_k(image_embeddings, k=0)
    with pytest.raises(ValueError, match="k must be"):
        scorer.top_k(image_embeddings, k=len(vocabulary) + 1)
    with pytest.raises(ValueError, match="score must be"):
        scorer.top_k(image_embeddings, score="probability")
    with pytest.raises(ValueError, match="image_embeddings"):
        scorer.top_k(torch.zeros(2, 10))
