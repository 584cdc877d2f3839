"""What a finished stage shows beside its run in the Prefect UI, as plain data.

A stage family's `view` module builds these from the stage's manifest and files
(`prefect_views(run, stage)`); `pipelines/publish.py` only posts them, so the stages and their
views never import Prefect. Every stage also gets its accounting table from here.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectflow.core.display import printable
from affectflow.core.runs import RunStore
from affectflow.core.store import StageArtifact

MISSING = "n/a"
"""A cell with no value. A bare "-" in a cell reads as a markdown list item in Prefect's table
view and renders as a bullet."""


@dataclass(frozen=True)
class StageView:
    """One Prefect artifact of a stage: a markdown page or a table (a list of rows).

    `name` is short and fixed per stage (`accounting`, `shares`, ...); publish derives the
    artifact key from it, the run id and the stage."""

    name: str
    description: str
    markdown: str | None = None
    table: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if (self.markdown is None) == (self.table is None):
            raise ValueError(f"view {self.name!r} needs exactly one of markdown or table")


def cell(value: object) -> str:
    """A markdown table cell: printable, HTML escaped, `|` escaped (values may come from file names)."""
    return html.escape(printable(str(value), 200)).replace("|", "\\|")


def percent(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{100 * value:.{digits}f}%"


def accounting_view(artifact: StageArtifact) -> StageView:
    """Rows in = rows out + rows rejected, with one row per reject reason (most frequent first)."""
    manifest = artifact.manifest
    rows: list[dict[str, Any]] = [
        {"rows": "in", "count": manifest["rows_in"]},
        {"rows": "out", "count": manifest["rows_out"]},
        {"rows": "rejected", "count": manifest["rows_rejected"]},
    ]
    rows += [{"rows": f"rejected: {printable(reason, 80)}", "count": count}
             for reason, count in sorted(manifest["rejects_by_reason"].items(),
                                         key=lambda item: (-item[1], item[0]))]
    seconds = manifest["timings"]["seconds"]
    return StageView("accounting", f"{manifest['stage']}: {manifest['rows_in']} in = "
                                   f"{manifest['rows_out']} out + {manifest['rows_rejected']} "
                                   f"rejected, {seconds:.1f} s", table=rows)


def picture_markdown(artifact: StageArtifact, relative: str, title: str) -> list[str]:
    """A PNG of the stage embedded in the page (a data URI: the UI cannot read local files)
    and its path on disk; the file is checked against the stage's records first."""
    path = artifact.checked(artifact.path / relative)
    if not path.is_file():
        return [f"*{cell(title)}: {cell(relative)} is missing*"]
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return [f"![{cell(title)}](data:image/png;base64,{encoded})", "",
            f"File: `{path.resolve()}`"]


def stage_markdown(artifact: StageArtifact, relative: str) -> str:
    """A markdown file the stage wrote, checked against the stage's records."""
    return artifact.checked(artifact.path / relative).read_text(encoding="utf-8")


def file_link(path: Path, label: str) -> str:
    """A link to a local file (opens from a browser on the same machine) with its path as text."""
    return f"[{cell(label)}]({path.resolve().as_uri()}) (`{path.resolve()}`)"


VIEWS_DIR = "views"
"""Under a run folder: files made for people to look at (the partition gallery), written again
each time they are published; no stage reads them and they are not part of any stage's records."""


def views_dir(run: RunStore) -> Path:
    return run.path / VIEWS_DIR
