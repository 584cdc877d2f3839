"""What a labelled row may carry beyond one class label, for the task kinds of the PACL paper's
Table 1: a multi-label category set (Emotic), numeric targets such as valence / arousal /
dominance (Emotic, IAPS), and the class tree of a hierarchical label (WebEmo 2 -> 7 -> 25).

Cells are untrusted: parsing returns a problem name and a detail instead of raising, so a bad
cell becomes a rejects row with its reason and the stage's accounting still closes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

Parsed = tuple[Any, str | None, str | None]
"""(value or None, problem, detail): problem and detail are set when the cell is bad."""


def is_blank(value: Any) -> bool:
    """An absent cell: None, NaN (pandas' missing value) or an empty / whitespace string."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def parse_label_set(value: Any, separator: str) -> Parsed:
    """A category set from a `separator`-joined string (CSV) or a list of strings (JSONL, Parquet).

    A blank cell is no annotation (None); empty pieces ("a;;b") and repeated categories are
    `bad_label_set`: both mean the cell was written wrongly, and guessing would hide it."""
    if isinstance(value, (list, tuple, np.ndarray)):
        pieces = [str(item).strip() for item in value]
    elif is_blank(value):
        return None, None, None
    else:
        pieces = [piece.strip() for piece in str(value).split(separator)]
    if not pieces:
        return None, None, None
    if any(not piece for piece in pieces):
        return None, "bad_label_set", f"empty category in {value!r} (separator {separator!r})"
    repeated = sorted({piece for piece in pieces if pieces.count(piece) > 1})
    if repeated:
        return None, "bad_label_set", f"categories {repeated} repeated in {value!r}"
    return pieces, None, None


def parse_targets(cells: Sequence[Any], names: Sequence[str]) -> Parsed:
    """Numeric targets in `names` order: all blank -> None; some blank -> `missing_target`;
    not a finite number -> `bad_target`."""
    blank = [name for name, cell in zip(names, cells) if is_blank(cell)]
    if len(blank) == len(names):
        return None, None, None
    if blank:
        return None, "missing_target", f"no value for {blank}"
    values = []
    for name, cell in zip(names, cells):
        try:
            number = float(str(cell).strip())
        except ValueError:
            return None, "bad_target", f"{name} = {str(cell)[:40]!r} is not a number"
        if not math.isfinite(number):
            return None, "bad_target", f"{name} = {number} is not finite"
        values.append(number)
    return values, None, None


def out_of_range(values: Sequence[float], names: Sequence[str],
                 bounds: tuple[float, float]) -> str | None:
    """A detail naming the first target outside [low, high], or None."""
    low, high = bounds
    for name, value in zip(names, values):
        if not low <= value <= high:
            return f"{name} = {value:g} outside [{low:g}, {high:g}]"
    return None


class LabelLevel(BaseModel):
    """One level of a label tree: its name and, except on the finest level, which classes of the
    next finer level each of its classes holds (`{positive: [love, joy, surprise], ...}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    groups: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("groups")
    @classmethod
    def _non_empty_groups(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        empty = [name for name, children in value.items() if not children]
        if empty:
            raise ValueError(f"classes {empty} hold no class of the next level")
        return value


def hierarchy_classes(levels: Sequence[LabelLevel]) -> list[list[str]]:
    """The classes of every level, coarsest first, in declared order: a level's classes are the
    groups of the level above it (the coarsest level's are its own group names)."""
    classes = [list(levels[0].groups)]
    for level in levels[:-1]:
        classes.append([child for group in level.groups.values() for child in group])
    return classes


def check_hierarchy(levels: Sequence[LabelLevel]) -> None:
    """A tree, coarsest level first: every level but the finest groups exactly the classes the
    level above gives it, each class of the next level sits in exactly one group, and the finest
    level lists no groups."""
    if len(levels) < 2:
        raise ValueError("a hierarchy needs at least two levels, coarsest first, e.g. polarity "
                         "-> emotion")
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"level names {names} repeat a name")
    if levels[-1].groups:
        raise ValueError(f"the finest level '{levels[-1].name}' must not list groups: its classes "
                         f"are those the level above it groups")
    for level in levels[:-1]:
        if not level.groups:
            raise ValueError(f"level '{level.name}' lists no groups of the next level's classes")
        children = [child for group in level.groups.values() for child in group]
        repeated = sorted({child for child in children if children.count(child) > 1})
        if repeated:
            raise ValueError(f"level '{level.name}' puts {repeated} in more than one group")
    for level, given in zip(levels[1:-1], hierarchy_classes(levels)[1:]):
        if set(level.groups) != set(given):
            raise ValueError(f"level '{level.name}' groups {sorted(level.groups)}, but the level "
                             f"above it gives it the classes {sorted(given)}")


def class_paths(levels: Sequence[LabelLevel]) -> dict[str, list[str]]:
    """Finest class -> its class at every level, coarsest first (of a checked hierarchy)."""
    paths: dict[str, list[str]] = {name: [name] for name in levels[0].groups}
    for level in levels[:-1]:
        paths = {child: [*paths[parent], child] for parent, group in level.groups.items()
                 for child in group}
    return paths
