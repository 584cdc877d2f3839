"""Demo data is deterministic by seed and its planted structure is what the ground truth says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from affectflow.demo.generate import MISMATCH_SHARES, generate_demo


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    generate_demo(tmp_path / "a", posts=24, seed=3, per_class=2, caption_pairs=14,
                  emotic_images=30, webemo_per_class=4)
    generate_demo(tmp_path / "b", posts=24, seed=3, per_class=2, caption_pairs=14,
                  emotic_images=30, webemo_per_class=4)
    generate_demo(tmp_path / "c", posts=24, seed=4, per_class=2, caption_pairs=14,
                  emotic_images=30, webemo_per_class=4)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_ground_truth_matches_the_texts(demo_dir: Path) -> None:
    truth = pd.read_csv(demo_dir / "ground_truth.csv", dtype={"source_id": str})
    assert len(truth) == 60
    shares = truth["kind"].value_counts(normalize=True)
    for kind, share in MISMATCH_SHARES.items():
        assert abs(shares[kind] - share) < 0.06
    for row in truth.itertuples():
        text = (demo_dir / "tumemo" / f"{row.source_id}.txt").read_text()
        if row.bad_file == "empty_text":
            continue
        assert row.text_objects in text
        assert (row.image_objects == row.text_objects) == bool(row.factual_match)
        assert (row.emotion == row.text_emotion) == bool(row.emotional_match)
    assert set(truth["bad_file"].dropna()) == {"truncated_image", "empty_text", "duplicate_id",
                                               "zero_byte_image"}
    fi = sorted(p.name for p in (demo_dir / "fi").iterdir())
    assert len(fi) == 8 and all(len(list((demo_dir / "fi" / c).iterdir())) == 10 for c in fi)


def _colour_spread(folder: Path) -> float:
    """Spread across images of their mean RGB: how much a class's colours vary photo to photo."""
    means = [np.asarray(Image.open(path), dtype=np.float32).mean(axis=(0, 1))
             for path in sorted(folder.glob("*.jpg"))]
    return float(np.std(means, axis=0).mean())


def test_lighting_varies_post_and_fi_photos_but_not_the_caption_pairs(tmp_path: Path) -> None:
    settings = {"posts": 24, "seed": 3, "per_class": 12, "caption_pairs": 14, "emotic_images": 30,
                "webemo_per_class": 4}
    generate_demo(tmp_path / "lit", **settings)
    generate_demo(tmp_path / "flat", **settings, lighting=False)
    assert tree_digest(tmp_path / "lit" / "captions") == tree_digest(tmp_path / "flat" / "captions")
    assert (tmp_path / "lit" / "tumemo" / "100010.txt").read_text() == \
        (tmp_path / "flat" / "tumemo" / "100010.txt").read_text()
    for fi_class in ("sadness", "awe"):
        lit = _colour_spread(tmp_path / "lit" / "fi" / fi_class)
        flat = _colour_spread(tmp_path / "flat" / "fi" / fi_class)
        assert lit > 2 * flat, (fi_class, lit, flat)


def test_emotic_style_set_plants_categories_and_vad_from_the_palettes(demo_dir: Path) -> None:
    from affectflow.demo.generate import VAD_NOISE
    from affectflow.demo.scenes import EMOTION_VAD
    rows = pd.read_csv(demo_dir / "emotic" / "manifest.csv", dtype=str, keep_default_na=False)
    assert len(rows) == 70 and "split" not in rows  # no split given: the config asks for 8:1:1
    assert rows.loc[0, "categories"].endswith(";Boredom") and rows.loc[1, "valence"] == "11.5"
    assert rows.loc[2, "arousal"] == ""
    sizes = []
    for row in rows.iloc[3:].itertuples():
        emotions = row.categories.split(";")
        sizes.append(len(emotions))
        assert set(emotions) <= set(EMOTION_VAD)
        for axis, value in enumerate((row.valence, row.arousal, row.dominance)):
            planted = sum(EMOTION_VAD[e][axis] for e in emotions) / len(emotions)
            assert abs(float(value) - planted) < 5 * VAD_NOISE and 1 <= float(value) <= 10
    assert set(sizes) == {1, 2}
    with Image.open(demo_dir / "emotic" / "00004.jpg") as two:  # index 4: two emotions
        pixels = np.asarray(two, dtype=np.float32)
    half = pixels.shape[1] // 2
    left, right = pixels[:, :half].mean(axis=(0, 1)), pixels[:, half:].mean(axis=(0, 1))
    assert np.abs(left - right).max() > 20  # two palettes side by side


def test_webemo_style_set_labels_moods_of_the_tree_with_train_and_test_only(demo_dir: Path) -> None:
    from affectflow.demo.scenes import demo_hierarchy
    rows = pd.read_csv(demo_dir / "webemo" / "manifest.csv", dtype=str)
    moods = [mood for group in demo_hierarchy()[1]["groups"].values() for mood in group]
    assert sorted(set(rows["label"])) == sorted(moods)
    assert set(rows["split"]) == {"train", "test"}
    counts = rows.groupby(["label", "split"]).size()
    assert all(counts[(mood, "train")] == 7 and counts[(mood, "test")] == 1 for mood in moods)


def test_demo_config_prompts_each_label_with_the_moods_its_captions_use() -> None:
    """The demo CLIP knows the mood adjectives of the demo captions, not the emotion names, so
    configs/demo.yaml's knowledge prompts use them; this keeps the two from drifting apart."""
    import yaml

    from affectflow.demo.scenes import EMOTION_MOODS

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())
    assert config["knowledge"]["label_words"] == {emotion: " and ".join(moods)
                                                  for emotion, moods in EMOTION_MOODS.items()}
