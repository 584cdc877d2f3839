"""Planted ground truth (e.g. the demo's `ground_truth.csv`), read one way by every stage that
checks its output against it (partition and emotional: planted mismatches; cluster and knowledge:
planted emotions).

The CSV has a header; rows are keyed by the post's `source_id`. It is a small evaluation file
(one row per labelled post), so it is held in memory.
"""

from __future__ import annotations

import csv
from pathlib import Path

from affectflow.core.errors import UserError
from affectflow.core.store import SOURCE_ID

MATCH_COLUMNS = ("factual_match", "emotional_match")
"""Whether the post's text describes its image, and whether its emotion was left as planted."""
EMOTION_COLUMNS = ("emotion", "text_emotion")
"""The planted emotion of the image, and the emotion the text was written with."""
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def read_ground_truth(path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """source_id -> {column: value} for the named columns (which the header must have)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = [SOURCE_ID, *columns]
        missing = [column for column in needed if column not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"ground truth {path} lacks columns {missing}",
                            hint=f"the CSV needs a header with {', '.join(needed)}")
        return {row[SOURCE_ID]: {column: row[column] for column in columns} for row in reader}


def truth_flag(value: str, column: str, source_id: str, path: Path) -> bool:
    """A true/false cell (True/False, 1/0, yes/no)."""
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise UserError(f"{path}: {column} of {source_id!r} must be true/false, got {value!r}",
                        hint="write True/False, 1/0 or yes/no") from None


def match_truth(path: Path) -> dict[str, tuple[bool, bool]]:
    """source_id -> (factual_match, emotional_match), the planted mismatches of a ground truth."""
    factual, emotional = MATCH_COLUMNS
    return {source_id: (truth_flag(row[factual], factual, source_id, path),
                        truth_flag(row[emotional], emotional, source_id, path))
            for source_id, row in read_ground_truth(path, MATCH_COLUMNS).items()}
