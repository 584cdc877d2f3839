"""`affectflow demo-data`: a seeded TumEmo-layout post dump plus labelled sets for every task kind
of the PACL paper's Table 1: an FI-style image folder (single-label), an Emotic-style manifest
(category sets and valence / arousal / dominance) and a WebEmo-style manifest (a mood label under
a polarity -> emotion -> mood tree, with only train and test given).

Planted structure (recorded in `ground_truth.csv`): each post's image shows the objects and
colours its text names, on a palette that follows its emotion. A known share of posts has
the scene description of another image (factual mismatch), flipped emotion words (emotional
mismatch) or both. In the labelled sets the labels follow the palettes: an Emotic-style image
shows one or two emotions' palettes side by side, its categories are those emotions and its VAD
the mean of theirs (plus noise); a WebEmo-style image shows its emotion's palette, shifted for
the emotion's second mood. A few deliberately bad files and cells make the demo show rejects.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from affectflow.core.errors import UserError
from affectflow.demo.scenes import (
    COLOURS,
    EMOTION_MOODS,
    EMOTION_PALETTES,
    EMOTION_VAD,
    EMOTION_WORDS,
    FI_CLASSES,
    FI_PALETTE_SHIFT,
    FI_TO_POST_EMOTION,
    MOOD_SHIFT,
    OBJECTS,
    OPPOSITE_EMOTION,
    draw_scene,
    random_lighting,
)

MISMATCH_SHARES = {"match": 0.4, "factual": 0.2, "emotional": 0.2, "both": 0.2}
DECORATIONS = ["#{word}", "@friend{n}", "https://t.co/x{n}", "\U0001F60A", "\U0001F622", "lol",
               "#photo", "!!", "can't believe it", "we're here"]
BAD_FILES = ("truncated_image", "empty_text", "duplicate_id", "zero_byte_image")


@dataclass
class Post:
    post_id: str
    emotion: str
    objects: list[tuple[str, str]]
    text: str
    text_emotion: str
    text_objects: list[tuple[str, str]]
    kind: str


def _scene(rng: random.Random) -> list[tuple[str, str]]:
    names = rng.sample(OBJECTS, rng.choice((1, 2, 2)))
    return [(name, rng.choice(sorted(COLOURS))) for name in names]


def _describe(objects: list[tuple[str, str]]) -> str:
    article = {True: "an", False: "a"}
    return " and ".join(f"{article[colour[0] in 'aeiou']} {colour} {name}" for name, colour in objects)


def _text(objects: list[tuple[str, str]], emotion: str, rng: random.Random, n: int) -> str:
    words = EMOTION_WORDS[emotion]
    feeling = rng.choice(words)
    templates = ["{feeling}! {scene} today", "{scene}, feeling {feeling}",
                 "look at {scene} ... {feeling}", "{scene}. {feeling} {feeling2}"]
    text = rng.choice(templates).format(feeling=feeling, scene=_describe(objects),
                                        feeling2=rng.choice(words))
    extras = rng.sample(DECORATIONS, rng.randint(0, 2))
    extras = [e.format(word=rng.choice(words).split()[-1], n=n) for e in extras]
    return " ".join([text, *extras])


def _kind(index: int, total: int) -> str:
    """Deterministic mismatch kinds in the planted shares (interleaved, not blocked)."""
    cumulative, position = 0.0, (index * 0.6180339887) % 1.0
    for kind, share in MISMATCH_SHARES.items():
        cumulative += share
        if position < cumulative:
            return kind
    return "match"


def make_posts(count: int, rng: random.Random) -> list[Post]:
    emotions = sorted(EMOTION_PALETTES)
    posts = []
    scenes = [_scene(rng) for _ in range(count)]
    for index in range(count):
        emotion = emotions[index % len(emotions)]
        kind = _kind(index, count)
        text_objects = scenes[index]
        if kind in ("factual", "both"):
            others = [s for s in scenes if {o for o, _ in s}.isdisjoint({o for o, _ in scenes[index]})]
            text_objects = rng.choice(others) if others else _scene(rng)
        text_emotion = OPPOSITE_EMOTION[emotion] if kind in ("emotional", "both") else emotion
        posts.append(Post(f"{100000 + index}", emotion, scenes[index],
                          _text(text_objects, text_emotion, rng, index), text_emotion,
                          text_objects, kind))
    return posts


def write_tumemo(root: Path, posts: list[Post], rng: random.Random, size: int,
                 lighting: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["id label"]
    for post in posts:
        draw_scene(post.emotion, post.objects, rng, size, lighting=lighting).save(
            root / f"{post.post_id}.jpg", quality=90)
        (root / f"{post.post_id}.txt").write_text(post.text, encoding="utf-8")
        lines.append(f"{post.post_id} {post.emotion}")
    # Deliberately bad inputs, one of each kind, so a demo run shows its rejects.
    truncated = root / f"{posts[0].post_id}.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / f"{posts[1].post_id}.txt").write_text("   ", encoding="utf-8")
    lines.append(f"{posts[2].post_id} {posts[2].emotion}")
    (root / f"{posts[3].post_id}.jpg").write_bytes(b"")
    (root / "all_data_id_and_label.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_image_folder(root: Path, per_class: int, rng: random.Random, size: int,
                       lighting: bool = False) -> None:
    for fi_class in FI_CLASSES:
        folder = root / fi_class
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = draw_scene(FI_TO_POST_EMOTION[fi_class], _scene(rng), rng, size,
                               palette_shift=FI_PALETTE_SHIFT[fi_class], lighting=lighting)
            image.save(folder / f"{fi_class}_{index:04d}.jpg", quality=90)


VAD_NOISE = 0.4  # standard deviation of the noise on planted VAD targets


def write_emotic_manifest(root: Path, count: int, rng: random.Random, size: int,
                          lighting: bool = False) -> None:
    """Emotic-style `manifest.csv` (id, image, categories, valence, arousal, dominance), no
    split: two thirds of the images show two emotions' palettes (left and right half), the rest
    one; the categories are those emotions, the VAD their mean plus noise, on a 1-10 scale."""
    root.mkdir(parents=True, exist_ok=True)
    emotions = sorted(EMOTION_PALETTES)
    rows = []
    for index in range(count):
        chosen = [emotions[index % len(emotions)]]
        if index % 3:
            chosen.append(rng.choice([e for e in emotions if e != chosen[0]]))
        image = draw_scene(chosen[0], _scene(rng), rng, size)
        if len(chosen) == 2:
            other = draw_scene(chosen[1], _scene(rng), rng, size)
            image.paste(other.crop((size // 2, 0, size, size)), (size // 2, 0))
        if lighting:
            image = random_lighting(image, rng)
        image.save(root / f"{index:05d}.jpg", quality=90)
        vad = [sum(EMOTION_VAD[e][axis] for e in chosen) / len(chosen) + rng.gauss(0, VAD_NOISE)
               for axis in range(3)]
        rows.append([f"{index:05d}", f"{index:05d}.jpg", ";".join(chosen),
                     *(f"{min(10.0, max(1.0, value)):.2f}" for value in vad)])
    # Deliberately bad cells, one of each kind, so the demo shows these rejects too.
    rows[0][2] += ";Boredom"
    rows[1][3] = "11.5"
    rows[2][4] = ""
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "categories", "valence", "arousal", "dominance"])
        writer.writerows(rows)


def write_webemo_manifest(root: Path, per_class: int, rng: random.Random, size: int,
                          lighting: bool = False, test_share: float = 0.15) -> None:
    """WebEmo-style `manifest.csv` (id, image, label, split): the label is a mood, the finest
    level of the demo's polarity -> emotion -> mood tree, and the split gives only train and
    test (as WebEmo's does), so the config carves val out of train."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for emotion in sorted(EMOTION_PALETTES):
        for mood_index, mood in enumerate(EMOTION_MOODS[emotion]):
            shift = MOOD_SHIFT if mood_index else (0, 0, 0)
            for index in range(per_class):
                name = f"{mood}_{index:04d}"
                draw_scene(emotion, _scene(rng), rng, size, palette_shift=shift,
                           lighting=lighting).save(root / f"{name}.jpg", quality=90)
                rows.append([name, f"{name}.jpg", mood,
                             "test" if index < round(per_class * test_share) else "train"])
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "split"])
        writer.writerows(rows)


def write_ground_truth(path: Path, posts: list[Post]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_id", "emotion", "text_emotion", "kind", "factual_match",
                         "emotional_match", "image_objects", "text_objects", "bad_file"])
        bad = dict(zip((p.post_id for p in posts[:4]), BAD_FILES))
        for post in posts:
            writer.writerow([post.post_id, post.emotion, post.text_emotion, post.kind,
                             post.kind in ("match", "emotional"), post.kind in ("match", "factual"),
                             _describe(post.objects), _describe(post.text_objects),
                             bad.get(post.post_id, "")])


def write_caption_pairs(root: Path, count: int, rng: random.Random, size: int) -> None:
    """Clean image–caption pairs (objects, colours and mood all true) for the demo's CLIP and
    captioner: the stand-in for the web-scale pretraining real models come with. The wording
    has a verb ("shows") so captions learnt from it yield subject–verb–object triplets."""
    root.mkdir(parents=True, exist_ok=True)
    emotions = sorted(EMOTION_PALETTES)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "text", "label"])
        for index in range(count):
            emotion = emotions[index % len(emotions)]
            objects = _scene(rng)
            draw_scene(emotion, objects, rng, size).save(root / f"{index:05d}.jpg", quality=90)
            moods = list(EMOTION_MOODS[emotion])
            rng.shuffle(moods)
            writer.writerow([f"{index:05d}", f"{index:05d}.jpg",
                             f"a {moods[0]} and {moods[1]} picture shows {_describe(objects)}.",
                             emotion])


def write_anp_vocabulary(path: Path) -> None:
    """The demo's adjective–noun vocabulary: every mood adjective with every object noun."""
    anps = [f"{mood}_{noun}" for moods in EMOTION_MOODS.values() for mood in moods
            for noun in OBJECTS]
    path.write_text("\n".join(anps) + "\n", encoding="utf-8")


def generate_demo(out_dir: Path, posts: int = 1500, seed: int = 0, image_size: int = 128,
                  per_class: int = 150, caption_pairs: int = 1400,
                  lighting: bool = True, emotic_images: int = 420,
                  webemo_per_class: int = 30) -> dict[str, int]:
    """Write `tumemo/`, `fi/`, `emotic/`, `webemo/`, `captions/`, `anps.txt` and
    `ground_truth.csv` under `out_dir`; the same seed gives the same bytes.

    `lighting` puts post and FI images under a random colour cast and exposure (never the clean
    caption pairs the demo models learn from): without it a linear probe on any encoder, even a
    random one, is near perfect on the FI images and PACL has nothing to improve."""
    if posts < 20:
        raise UserError(f"--posts {posts} is too small", hint="use at least 20 posts")
    if per_class < 1:
        raise UserError(f"--per-class {per_class} is too small", hint="use at least 1 image per class")
    if emotic_images < 30 or webemo_per_class < 4:
        raise UserError(f"{emotic_images} Emotic-style images / {webemo_per_class} WebEmo-style "
                        "images per mood are too few for train, val and test",
                        hint="use at least 30 and 4")
    rng = random.Random(seed)
    records = make_posts(posts, rng)
    write_tumemo(out_dir / "tumemo", records, random.Random(seed + 1), image_size, lighting)
    write_image_folder(out_dir / "fi", per_class, random.Random(seed + 2), image_size, lighting)
    write_caption_pairs(out_dir / "captions", caption_pairs, random.Random(seed + 3), image_size)
    write_emotic_manifest(out_dir / "emotic", emotic_images, random.Random(seed + 4), image_size,
                          lighting)
    write_webemo_manifest(out_dir / "webemo", webemo_per_class, random.Random(seed + 5),
                          image_size, lighting)
    write_anp_vocabulary(out_dir / "anps.txt")
    write_ground_truth(out_dir / "ground_truth.csv", records)
    return {"posts": posts, "label_lines": posts + 1, "fi_images": per_class * len(FI_CLASSES),
            "emotic_images": emotic_images,
            "webemo_images": webemo_per_class * 2 * len(EMOTION_PALETTES),
            "caption_pairs": caption_pairs}
