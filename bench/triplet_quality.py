"""Triplet precision and recall of the spaCy frame parser on the hand-labelled captions in
`tests/data/triplets_gold.txt` (exact match of subject, verb and object; see tests/triplet_gold.py).

Quality, not speed: the figures are the same on every machine for the same spaCy pipeline. The
detail names the categories (passive, negation, run-on, ...) whose recall is lowest.
"""

from __future__ import annotations

from affectflow.models.triplets import extract_triplets, load_frame_parser
from bench.common import BenchRow
from tests.triplet_gold import read_gold, score_parser

PRECISION_TARGET = 0.9
RECALL_TARGET = 0.9


def run(quick: bool) -> list[BenchRow]:
    gold = read_gold()
    found = extract_triplets([entry.caption for entry in gold])
    overall, by_category = score_parser(found, gold)
    weakest = sorted(by_category.items(), key=lambda item: (item[1].recall, item[1].precision))[:3]
    categories = ", ".join(f"{name} P {score.precision:.2f} R {score.recall:.2f}"
                           for name, score in weakest)
    counts = (f"{len(gold)} captions, {overall.expected} labelled triplets, {overall.predicted} "
              f"found, {overall.right} right; parser {load_frame_parser().spec}")
    return [BenchRow("triplets: precision on labelled captions", overall.precision,
                     PRECISION_TARGET, detail=counts),
            BenchRow("triplets: recall on labelled captions", overall.recall, RECALL_TARGET,
                     detail=f"weakest categories: {categories}")]
