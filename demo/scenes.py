"""Vocabulary of the demo world: emotions with palettes and words, objects, colours, drawing."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

# Palette per emotion: background, two accents. Saturation/brightness follow common
# colour-emotion associations so an encoder can learn "palette -> emotion" from the posts.
EMOTION_PALETTES: dict[str, tuple[RGB, RGB, RGB]] = {
    "Love": ((246, 190, 205), (220, 40, 90), (255, 120, 160)),
    "Happy": ((255, 226, 110), (255, 150, 30), (250, 250, 210)),
    "Calm": ((185, 225, 215), (110, 170, 200), (230, 245, 240)),
    "Bored": ((172, 168, 158), (130, 128, 122), (200, 196, 188)),
    "Sad": ((55, 68, 108), (30, 40, 70), (110, 120, 150)),
    "Angry": ((165, 20, 18), (40, 8, 8), (255, 80, 20)),
    "Fear": ((28, 14, 42), (80, 30, 100), (5, 5, 10)),
}

EMOTION_WORDS: dict[str, list[str]] = {
    "Love": ["love", "adore", "romantic", "my sweetheart", "so in love"],
    "Happy": ["happy", "joyful", "so much fun", "smiling all day", "great day"],
    "Calm": ["calm", "peaceful", "relaxing", "serene", "quiet moment"],
    "Bored": ["bored", "so dull", "nothing to do", "boring afternoon", "meh"],
    "Sad": ["sad", "lonely", "crying", "heartbroken", "missing you"],
    "Angry": ["angry", "furious", "so mad", "hate this", "rage"],
    "Fear": ["scared", "afraid", "terrified", "creepy", "nightmare"],
}

# Mood adjectives describe a palette in the clean captions the demo CLIP learns from, and make
# up the demo's adjective-noun vocabulary (mood adjective x object).
EMOTION_MOODS: dict[str, tuple[str, str]] = {
    "Love": ("romantic", "tender"), "Happy": ("cheerful", "sunny"), "Calm": ("peaceful", "serene"),
    "Bored": ("dull", "grey"), "Sad": ("gloomy", "lonely"), "Angry": ("furious", "violent"),
    "Fear": ("scary", "haunted"),
}

# Emotional mismatch flips the text's emotion to a clearly different one.
OPPOSITE_EMOTION = {"Love": "Angry", "Happy": "Sad", "Calm": "Fear", "Bored": "Happy",
                    "Sad": "Happy", "Angry": "Calm", "Fear": "Calm"}

COLOURS: dict[str, RGB] = {
    "red": (215, 30, 30), "blue": (30, 70, 215), "green": (40, 160, 60),
    "yellow": (245, 215, 20), "white": (248, 248, 248), "black": (12, 12, 12),
    "orange": (245, 130, 20), "purple": (130, 40, 170),
}

OBJECTS = ("sun", "house", "tree", "car", "boat", "heart", "star", "mountain")

FI_CLASSES = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear",
              "sadness")
FI_TO_POST_EMOTION = {"amusement": "Happy", "anger": "Angry", "awe": "Calm",
                      "contentment": "Love", "disgust": "Bored", "excitement": "Happy",
                      "fear": "Fear", "sadness": "Sad"}
FI_PALETTE_SHIFT = {"amusement": (0, 0, 0), "excitement": (0, -60, 90), "anger": (0, 0, 0),
                    "awe": (-60, -40, 30), "contentment": (0, 0, 0), "disgust": (-20, 10, -60),
                    "fear": (0, 0, 0), "sadness": (0, 0, 0)}


# Valence, arousal, dominance of each post emotion on Emotic's 1-10 scale (after the usual
# placement of these emotions in VAD space): the demo's Emotic-style set plants its targets here.
EMOTION_VAD: dict[str, tuple[float, float, float]] = {
    "Love": (7.5, 5.5, 6.0), "Happy": (8.0, 6.5, 6.5), "Calm": (7.0, 2.5, 6.0),
    "Bored": (3.5, 2.0, 4.0), "Sad": (2.5, 3.0, 3.0), "Angry": (2.5, 8.0, 7.0),
    "Fear": (2.0, 7.5, 2.5),
}
POSITIVE_EMOTIONS = ("Love", "Happy", "Calm")
# The demo's WebEmo-style tree: polarity -> post emotion -> mood (the emotion's two mood
# adjectives). The second mood of each emotion is drawn with MOOD_SHIFT on its palette.
MOOD_SHIFT = (45, -35, 50)


def demo_hierarchy() -> list[dict[str, object]]:
    """The demo's label tree in the shape `ingest.hierarchy` takes, coarsest level first."""
    emotions = sorted(EMOTION_PALETTES)
    return [
        {"name": "polarity", "groups": {
            "positive": [e for e in emotions if e in POSITIVE_EMOTIONS],
            "negative": [e for e in emotions if e not in POSITIVE_EMOTIONS]}},
        {"name": "emotion", "groups": {e: list(EMOTION_MOODS[e]) for e in emotions}},
        {"name": "mood"},
    ]


def _jitter(colour: RGB, rng: random.Random, amount: int) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _shifted(colour: RGB, shift: tuple[int, int, int]) -> RGB:
    return tuple(max(0, min(255, c + s)) for c, s in zip(colour, shift))  # type: ignore[return-value]


def _draw_object(draw: ImageDraw.ImageDraw, name: str, colour: RGB, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if name == "sun":
        draw.ellipse(box, fill=colour)
        for dx, dy in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.line((cx, cy, cx + dx * w, cy + dy * h), fill=colour, width=max(1, w // 8))
    elif name == "house":
        draw.rectangle((x0, y0 + h // 2, x1, y1), fill=colour)
        draw.polygon([(x0, y0 + h // 2), ((x0 + x1) // 2, y0), (x1, y0 + h // 2)], fill=colour)
    elif name == "tree":
        draw.rectangle((x0 + w * 2 // 5, y0 + h // 2, x0 + w * 3 // 5, y1), fill=(90, 60, 30))
        draw.ellipse((x0, y0, x1, y0 + h * 2 // 3), fill=colour)
    elif name == "car":
        draw.rectangle((x0, y0 + h // 3, x1, y0 + h * 3 // 4), fill=colour)
        draw.rectangle((x0 + w // 4, y0 + h // 8, x0 + w * 3 // 4, y0 + h // 3), fill=colour)
        for cx in (x0 + w // 4, x0 + w * 3 // 4):
            draw.ellipse((cx - w // 8, y0 + h * 5 // 8, cx + w // 8, y0 + h * 7 // 8), fill=(20, 20, 20))
    elif name == "boat":
        draw.polygon([(x0, y0 + h // 2), (x1, y0 + h // 2), (x0 + w * 3 // 4, y1),
                      (x0 + w // 4, y1)], fill=colour)
        draw.polygon([((x0 + x1) // 2, y0), ((x0 + x1) // 2, y0 + h // 2 - 2),
                      (x0 + w * 3 // 4, y0 + h // 2 - 2)], fill=colour)
    elif name == "heart":
        draw.ellipse((x0, y0, x0 + w // 2, y0 + h // 2), fill=colour)
        draw.ellipse((x0 + w // 2, y0, x1, y0 + h // 2), fill=colour)
        draw.polygon([(x0, y0 + h // 4), (x1, y0 + h // 4), ((x0 + x1) // 2, y1)], fill=colour)
    elif name == "star":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        points = []
        for i in range(10):
            radius = (w / 2) if i % 2 == 0 else (w / 5)
            angle = math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    else:  # mountain
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)


# Per-photo lighting: channel gains in [1 - GAIN, 1 + GAIN], brightness offset in [-SHIFT, SHIFT].
LIGHTING_GAIN = 0.45
LIGHTING_SHIFT = 40.0


def random_lighting(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random colour cast and exposure, as two phone photos of one scene differ.

    Palettes then identify an emotion only relative to the photo's other colours, not by raw
    RGB values, so an encoder has to learn them: this is what lets the demo show PACL's gain."""
    gains = np.array([rng.uniform(1 - LIGHTING_GAIN, 1 + LIGHTING_GAIN) for _ in range(3)],
                     dtype=np.float32)
    offset = rng.uniform(-LIGHTING_SHIFT, LIGHTING_SHIFT)
    pixels = np.asarray(image, dtype=np.float32) * gains + offset
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_scene(emotion: str, objects: list[tuple[str, str]], rng: random.Random, size: int,
               palette_shift: tuple[int, int, int] = (0, 0, 0),
               lighting: bool = False) -> Image.Image:
    """A scene: emotion palette background with gradient and accents, then the named objects;
    with `lighting`, under a random colour cast and exposure."""
    background, accent, light = (_shifted(c, palette_shift) for c in EMOTION_PALETTES[emotion])
    image = Image.new("RGB", (size, size), _jitter(background, rng, 12))
    draw = ImageDraw.Draw(image)
    for row in range(size // 2, size, 2):
        draw.line((0, row, size, row), fill=_jitter(accent if row % 4 else light, rng, 10))
    for _ in range(6):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randint(size // 20, size // 8)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(light, rng, 20))
    slots = [(0.05, 0.1), (0.5, 0.1), (0.25, 0.45)]
    for (name, colour), (fx, fy) in zip(objects, slots):
        extent = int(size * rng.uniform(0.35, 0.45))
        x0 = int(size * fx + rng.randint(0, size // 16))
        y0 = int(size * fy + rng.randint(0, size // 16))
        _draw_object(draw, name, _jitter(COLOURS[colour], rng, 10), (x0, y0, x0 + extent, y0 + extent))
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.8)))
    return random_lighting(image, rng) if lighting else image
