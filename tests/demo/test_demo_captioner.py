"""The demo captioner: trained on demo caption pairs, saved, and read back by `load_captioner`."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

import affectflow.demo.captioner as demo_captioner
from affectflow.core.images import load_rgb
from affectflow.demo.captioner import build_demo_captioner, caption_vocabulary
from affectflow.demo.generate import write_caption_pairs
from affectflow.demo.models import read_caption_pairs
from affectflow.demo.scenes import EMOTION_MOODS
from affectflow.models.captioner import load_captioner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pairs(root: Path, count: int, seed: int) -> Path:
    write_caption_pairs(root / "captions", count, random.Random(seed), 64)
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = pairs(tmp_path_factory.mktemp("pairs"), 256, seed=3)
    return build_demo_captioner(data, data / "models" / "captioner", seed=0, epochs=16)


def test_trained_captioner_names_the_mood_of_unseen_pictures(trained: Path, tmp_path: Path) -> None:
    """The palette -> mood words mapping is learned first; a random model gets ~1 in 7 right."""
    captioner = load_captioner("blip", str(trained))
    fresh = pairs(tmp_path, 21, seed=11)
    paths, texts = read_caption_pairs(fresh / "captions")
    captions = captioner.caption([load_rgb(path) for path in paths])
    moods_of = {frozenset(moods) for moods in EMOTION_MOODS.values()}
    right = 0
    for caption, text in zip(captions, texts):
        head = set(caption.replace(",", " ").split()[:4])
        truth = next(moods for moods in moods_of if moods <= set(text.replace(",", " ").split()))
        right += truth <= head
    assert right >= 15, list(zip(captions, texts))


def test_vocabulary_comes_from_the_caption_words(trained: Path) -> None:
    _, texts = read_caption_pairs(trained.parents[1] / "captions")
    vocabulary = caption_vocabulary(texts)
    assert {"gloomy", "lonely", "picture", "car", "orange"} <= set(vocabulary)
    tokenizer = load_captioner("blip", str(trained)).preprocessor.processor.tokenizer
    assert tokenizer.tokenize(texts[0]) == texts[0].replace(",", " ,").replace(".", " .").split()


def test_a_saved_captioner_is_reused_not_retrained(trained: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = digest(trained / "model.safetensors")

    def no_training(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("the saved captioner should have been reused")

    monkeypatch.setattr(demo_captioner, "train_captioner", no_training)
    assert build_demo_captioner(trained.parents[1], trained) == trained
    assert digest(trained / "model.safetensors") == before


def test_same_seed_gives_the_same_weights(tmp_path: Path) -> None:
    data = pairs(tmp_path, 48, seed=5)
    first = build_demo_captioner(data, tmp_path / "a", seed=1, epochs=1)
    second = build_demo_captioner(data, tmp_path / "b", seed=1, epochs=1)
    assert digest(first / "model.safetensors") == digest(second / "model.safetensors")
    assert not (tmp_path / "a.partial").exists()
