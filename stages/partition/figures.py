"""Pictures of the partition: score histograms with their thresholds, and the 2-D score density.

Counts are accumulated shard by shard on fixed bin edges (known from the prepare pass), so the
pictures cost constant memory however many samples there are. Drawing uses matplotlib's Agg
canvas directly (no pyplot global state), which is safe in worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from affectflow.stages.partition.stats import ScoreScale
from affectflow.stages.pictures import new_figure, save_png

HIST_BINS = 60
DENSITY_BINS = 48
QUADRANTS = {  # partition -> (factual side, emotional side) of the threshold lines
    "strong": ("high", "high"), "partial_emotional": ("low", "high"),
    "partial_factual": ("high", "low"), "weak": ("low", "low")}


def plot_range(scale: ScoreScale) -> tuple[float, float]:
    """Raw-score axis range covering the data and the threshold line, with a small margin."""
    values = [v for v in (scale.minimum, scale.maximum, scale.threshold_raw) if np.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(1e-3, 0.04 * (high - low))
    return low - pad, high + pad


@dataclass
class ScoreHistograms:
    """Streaming 1-D and 2-D histograms of the raw factual and emotional scores."""

    factual_edges: np.ndarray
    emotional_edges: np.ndarray
    factual_counts: np.ndarray = field(init=False)
    emotional_counts: np.ndarray = field(init=False)
    joint_counts: np.ndarray = field(init=False)
    joint_factual_edges: np.ndarray = field(init=False)
    joint_emotional_edges: np.ndarray = field(init=False)

    @classmethod
    def for_scales(cls, factual: ScoreScale, emotional: ScoreScale) -> ScoreHistograms:
        return cls(np.linspace(*plot_range(factual), HIST_BINS + 1),
                   np.linspace(*plot_range(emotional), HIST_BINS + 1))

    def __post_init__(self) -> None:
        self.factual_counts = np.zeros(HIST_BINS, dtype=np.int64)
        self.emotional_counts = np.zeros(HIST_BINS, dtype=np.int64)
        self.joint_counts = np.zeros((DENSITY_BINS, DENSITY_BINS), dtype=np.int64)
        # Same span as the 1-D edges, coarser bins.
        self.joint_factual_edges = np.linspace(self.factual_edges[0], self.factual_edges[-1],
                                               DENSITY_BINS + 1)
        self.joint_emotional_edges = np.linspace(self.emotional_edges[0],
                                                 self.emotional_edges[-1], DENSITY_BINS + 1)

    def add(self, factual: np.ndarray, emotional: np.ndarray) -> None:
        self.factual_counts += np.histogram(factual, self.factual_edges)[0]
        self.emotional_counts += np.histogram(emotional, self.emotional_edges)[0]
        joint, _, _ = np.histogram2d(factual, emotional,
                                     bins=[self.joint_factual_edges, self.joint_emotional_edges])
        self.joint_counts += joint.astype(np.int64)


def _threshold_label(scale: ScoreScale) -> str:
    return f"threshold {scale.threshold_raw:.4g} ({scale.mode}, sigma {scale.sigma:g})"


def draw_histogram(path: Path, title: str, edges: np.ndarray, counts: np.ndarray,
                   scale: ScoreScale) -> None:
    figure = new_figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    axes.stairs(counts, edges, fill=True, color="#4c78a8", alpha=0.85)
    if np.isfinite(scale.threshold_raw):
        axes.axvline(scale.threshold_raw, color="#d62728", linestyle="--",
                     label=_threshold_label(scale))
        axes.legend(loc="best", fontsize=8)
    axes.set_title(title)
    axes.set_xlabel("raw score (cosine); matched = right of the line")
    axes.set_ylabel("samples")
    figure.tight_layout()
    save_png(figure, path)


def draw_density(path: Path, histograms: ScoreHistograms, factual: ScoreScale,
                 emotional: ScoreScale, shares: dict[str, float]) -> None:
    """2-D histogram (log colour) with both threshold lines and each quadrant's name and share."""
    figure = new_figure(figsize=(6.4, 5.6))
    axes = figure.add_subplot()
    x_edges, y_edges = histograms.joint_factual_edges, histograms.joint_emotional_edges
    x_range = (float(x_edges[0]), float(x_edges[-1]))
    y_range = (float(y_edges[0]), float(y_edges[-1]))
    counts = np.ma.masked_equal(histograms.joint_counts.T, 0)
    if counts.count():
        mesh = axes.pcolormesh(x_edges, y_edges, counts,
                               norm=LogNorm(vmin=1, vmax=max(1, int(counts.max()))), cmap="viridis")
        bar = figure.colorbar(mesh, ax=axes, label="samples per cell (log scale)")
        bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    split_x = factual.threshold_raw if np.isfinite(factual.threshold_raw) else sum(x_range) / 2
    split_y = emotional.threshold_raw if np.isfinite(emotional.threshold_raw) else sum(y_range) / 2
    axes.axvline(split_x, color="#d62728", linestyle="--")
    axes.axhline(split_y, color="#d62728", linestyle="--")
    for name, (f_side, e_side) in QUADRANTS.items():
        x = (split_x + x_range[1]) / 2 if f_side == "high" else (x_range[0] + split_x) / 2
        y = (split_y + y_range[1]) / 2 if e_side == "high" else (y_range[0] + split_y) / 2
        axes.text(x, y, f"{name}\n{shares.get(name, 0.0):.1%}", ha="center", va="center",
                  fontsize=9, color="black",
                  bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    axes.set_xlim(*x_range)
    axes.set_ylim(*y_range)
    axes.set_xlabel(f"factual score (raw); {_threshold_label(factual)}", fontsize=8)
    axes.set_ylabel(f"emotional score (raw); {_threshold_label(emotional)}", fontsize=8)
    axes.set_title("partition quadrants")
    figure.tight_layout()
    save_png(figure, path)
