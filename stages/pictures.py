"""Pictures the stages write (histograms, curves, confusion matrices): matplotlib figures drawn on
their own Agg canvas, without pyplot's global state (safe in worker threads), saved atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from affectflow.core.atomic import write_bytes


def new_figure(**options: Any) -> Figure:
    """A figure with its own Agg canvas (`options` as for `Figure`, e.g. figsize)."""
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path, dpi: int = 110, tight: bool = False) -> None:
    """Render to PNG and write it atomically (`tight` crops to the drawn content)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    write_bytes(path, buffer.getvalue())
