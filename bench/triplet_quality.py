"""Triplet precision and recall of the spaCy frame parser on the hand-labelled captions in
`tests/data/` (exact match of subject, verb and object; see tests/triplet_gold.py).

Two sets: `triplets_gold.txt`, which the parser's clause rules were written against, and
`triplets_heldout.txt`, labelled before the parser was run on it. Quality, not speed: the figures
are the same on every machine for the same spaCy pipeline. The detail names the categories
(passive, negation, run-on, ...) whose recall is lowest.
"""

from __future__ import annotations

from pathlib import Path

from affectflow.models.triplets import extract_triplets, load_frame_parser
from bench.common import BenchRow
from tests.triplet_gold import GOLD_FILE, HELDOUT_FILE, read_gold, score_parser

TARGET = 0.9


def scored(path: Path, label: str) -> list[BenchRow]:
    gold = read_gold(path)
    overall, by_category = score_parser(extract_triplets([entry.caption for entry in gold]), gold)
    weakest = sorted(by_category.items(), key=lambda item: (item[1].recall, item[1].precision))[:3]
    categories = ", ".join(f"{name} P {score.precision:.2f} R {score.recall:.2f}"
                           for name, score in weakest)
    counts = (f"{len(gold)} captions, {overall.expected} labelled triplets, {overall.predicted} "
              f"found, {overall.right} right; parser {load_frame_parser().spec}")
    return [BenchRow(f"triplets: precision, {label}", overall.precision, TARGET, detail=counts),
            BenchRow(f"triplets: recall, {label}", overall.recall, TARGET,
                     detail=f"weakest categories: {categories}" if len(by_category) > 1 else counts)]


def run(quick: bool) -> list[BenchRow]:
    return [*scored(GOLD_FILE, "labelled captions"), *scored(HELDOUT_FILE, "held-out captions")]
