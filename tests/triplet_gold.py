"""The hand-labelled triplet set (`tests/data/triplets_gold.txt`) and how a parser is scored on it.

Scoring is exact match of all three parts after lower-casing and collapsing whitespace, counted
as multisets per caption: a triplet found twice but labelled once counts once as right and once
as wrong. Precision and recall are micro-averaged over the whole set (every triplet weighs the
same), so long run-on captions count by the facts they hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from affectflow.models.triplets import Triplet

GOLD_FILE = Path(__file__).parent / "data" / "triplets_gold.txt"
"""The captions the parser's clause rules were written against."""
HELDOUT_FILE = Path(__file__).parent / "data" / "triplets_heldout.txt"
"""Captions labelled after those rules were written, before the parser was run on them."""
NONE_MARK = "none"


@dataclass(frozen=True)
class GoldCaption:
    category: str
    caption: str
    triplets: tuple[Triplet, ...]


def read_gold(path: Path = GOLD_FILE) -> list[GoldCaption]:
    """Captions and their hand-written triplets, in file order."""
    captions: list[GoldCaption] = []
    category, caption, triplets = "", None, []

    def close() -> None:
        if caption is not None:
            captions.append(GoldCaption(category, caption, tuple(triplets)))

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("## "):
            close()
            category, caption, triplets = line[3:].strip(), None, []
        elif not line.strip() or line.startswith("#"):
            continue
        elif line.startswith(" "):
            if caption is None:
                raise ValueError(f"{path}:{number}: a triplet line before any caption")
            if line.strip() != NONE_MARK:
                parts = [part.strip() for part in line.split("|")]
                if len(parts) != 3 or not all(parts):
                    raise ValueError(f"{path}:{number}: expected 'subject | verb | object'")
                triplets.append(Triplet(*parts))
        else:
            close()
            caption, triplets = line.strip(), []
    close()
    return captions


def normalised(triplet: Triplet) -> tuple[str, ...]:
    return tuple(" ".join(part.lower().split()) for part in triplet)


@dataclass
class Score:
    """Counts of one comparison; precision/recall are 1.0 when nothing was predicted/expected."""

    right: int = 0
    predicted: int = 0
    expected: int = 0

    def add(self, predicted: Iterable[Triplet], expected: Iterable[Triplet]) -> None:
        found, gold = Counter(map(normalised, predicted)), Counter(map(normalised, expected))
        self.right += sum((found & gold).values())
        self.predicted += sum(found.values())
        self.expected += sum(gold.values())

    @property
    def precision(self) -> float:
        return self.right / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.expected if self.expected else 1.0


def score_parser(found: list[list[Triplet]], gold: list[GoldCaption]) -> tuple[Score, dict[str, Score]]:
    """Overall and per-category scores of `found` (one list per gold caption, in order)."""
    overall, by_category = Score(), {}
    for triplets, entry in zip(found, gold, strict=True):
        overall.add(triplets, entry.triplets)
        by_category.setdefault(entry.category, Score()).add(triplets, entry.triplets)
    return overall, by_category
