"""Heat-map overlays of CTERNet's pseudo sentiment map S over test images, for inspection.

`write_sentiment_maps` takes N evaluated test images of a run, drawn in turn from each true
class (so a few maps already show every class), draws each image's centre crop beside the crop
with S laid over it, with a colour bar and the true / predicted label in the picture (one PNG
per image), and writes an HTML index. Every text in the page (source ids, labels) comes from the
dataset and is escaped; in the pictures it is printed as plain text (no mathtext).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from PIL import Image

from affectflow.core.atomic import write_text
from affectflow.core.display import printable
from affectflow.core.errors import UserError
from affectflow.core.images import load_rgb
from affectflow.core.runs import RunStore
from affectflow.core.store import SAMPLE_ID, SOURCE_ID
from affectflow.models.cternet.classifier import load_classifier, sentiment_maps
from affectflow.models.cternet.data import eval_geometry
from affectflow.stages.cternet.evaluate import PREDICTED, PROBABILITIES
from affectflow.stages.cternet.train import TARGET
from affectflow.stages.ingest.stage import IMAGE_PATH, LABEL
from affectflow.stages.pictures import new_figure, save_png

INDEX_FILE = "index.html"
OVERLAY_ALPHA = 0.5
COLOUR_MAP = "jet"
FIGURE_DPI = 100
MIN_DISPLAY_SIDE = 224  # small demo inputs are enlarged so the maps are visible
BATCH_SIZE = 16


def overlay(crop: Image.Image, heat: np.ndarray) -> Image.Image:
    """The crop blended with the map in the 'jet' colour map (red = high)."""
    coloured = (colormaps[COLOUR_MAP](heat)[..., :3] * 255).astype(np.uint8)
    return Image.blend(crop, Image.fromarray(coloured), OVERLAY_ALPHA)


def _plain(text: str) -> str:
    """Dataset text for a matplotlib label: terminal-safe, and `$` shown rather than parsed."""
    return printable(text, 60).replace("$", r"\$")


def draw_map(path: Path, crop: Image.Image, heat: np.ndarray, caption: str) -> None:
    """The crop beside its overlay, a colour bar for S and the caption (true / predicted)."""
    side = max(crop.width, MIN_DISPLAY_SIDE) / FIGURE_DPI
    figure = new_figure(figsize=(2 * side + 1.0, side + 0.6))
    picture, mapped, bar = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.06]})
    picture.imshow(np.asarray(crop))
    picture.set_title("centre crop", fontsize=8)
    mapped.imshow(np.asarray(overlay(crop, heat)))
    mapped.set_title("pseudo sentiment map S", fontsize=8)
    for axis in (picture, mapped):
        axis.set_axis_off()
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=COLOUR_MAP)
    colour_bar = figure.colorbar(scale, cax=bar)
    colour_bar.set_label("S, min-max scaled per image", fontsize=7)
    colour_bar.ax.tick_params(labelsize=6)
    figure.suptitle(_plain(caption), fontsize=8)
    save_png(figure, path, dpi=FIGURE_DPI)


def across_classes(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to `n` rows taken in turn from each true class (classes sorted, rows in stored order)."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(str(row[LABEL]), []).append(row)
    queues = [by_class[label] for label in sorted(by_class)]
    chosen: list[dict[str, Any]] = []
    for depth in range(max((len(queue) for queue in queues), default=0)):
        chosen += [queue[depth] for queue in queues if depth < len(queue)]
        if len(chosen) >= n:
            break
    return chosen[:n]


def _figure(file: str, source_id: str, row: dict[str, str], probability: float) -> str:
    """`row`: the label, the target it is scored against (its polarity for a polarity model)
    and the prediction."""
    verdict = "correct" if row[TARGET] == row[PREDICTED] else "wrong"
    true = html.escape(row[LABEL])
    if row[TARGET] != row[LABEL]:
        true += f" ({html.escape(row[TARGET])})"
    text = (f"{html.escape(source_id)}<br>true: {true} · predicted: "
            f"{html.escape(row[PREDICTED])} (p = {probability:.2f}, {verdict})")
    return (f'<figure class="{verdict}"><img src="{html.escape(file)}" '
            f'alt="{html.escape(source_id)}"><figcaption>{text}</figcaption></figure>')


def _page(run_id: str, figures: list[str], failures: list[str]) -> str:
    problems = "".join(f"<li>{html.escape(item)}</li>" for item in failures)
    return "\n".join([
        "<!doctype html>", '<html><head><meta charset="utf-8">',
        f"<title>CTERNet sentiment maps: {html.escape(run_id)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:.6em;"
        "max-width:460px}img{width:100%}figcaption{font-size:.9em}"
        ".wrong figcaption{color:#b00}</style></head><body>",
        f"<h1>CTERNet sentiment maps: run {html.escape(run_id)}</h1>",
        "<p>Left: the centre crop the model sees. Right: the pseudo sentiment map S (class-score "
        "weighted class maps), min-max scaled per image; red marks the regions that drive the "
        "prediction.</p>",
        *figures,
        f"<h2>Images that could not be drawn</h2><ul>{problems}</ul>" if failures else "",
        "</body></html>", ""])


def write_sentiment_maps(run_store: RunStore, n: int, out_dir: Path,
                         device: str | None = None) -> Path:
    """Overlays for `n` evaluated test images of the run, across its classes; returns the HTML
    index (`out_dir` is the caller's choice, never the run folder: a run's files are its stages')."""
    if n < 1:
        raise UserError(f"--maps {n}: nothing to draw", hint="ask for at least one image")
    evaluation = run_store.stage("cternet_eval")
    if not evaluation.complete:
        raise UserError(f"run {run_store.run_id!r} has no finished cternet_eval stage",
                        hint="run the cternet flow first: affectflow run cternet --config ...")
    evaluated = across_classes(evaluation.read_all(
        columns=[SAMPLE_ID, LABEL, TARGET, PREDICTED, PROBABILITIES]).to_pylist(), n)
    ingest = run_store.stage("ingest").read_all(columns=[SAMPLE_ID, SOURCE_ID, IMAGE_PATH])
    source = {row[SAMPLE_ID]: row for row in ingest.to_pylist()}
    classifier = load_classifier(run_store.stage("cternet_train").path, device)
    if classifier.model.config.mode == "vanilla":
        raise UserError("this run's CTERNet was trained in mode 'vanilla', which has no "
                        "sentiment map", hint="train with cternet_train.mode: full or smad_f")
    geometry = eval_geometry(classifier.model.config)
    figures, failures = [], []
    for start in range(0, len(evaluated), BATCH_SIZE):
        rows, crops = [], []
        for row in evaluated[start:start + BATCH_SIZE]:
            found = source[row[SAMPLE_ID]]
            try:
                crops.append(geometry(load_rgb(found[IMAGE_PATH])))
            except OSError as error:
                failures.append(f"{found[SOURCE_ID]}: {type(error).__name__}: {error}")
                continue
            rows.append(row | {SOURCE_ID: found[SOURCE_ID]})
        if not crops:
            continue
        heat = sentiment_maps(classifier, crops)
        for offset, (row, crop, row_heat) in enumerate(zip(rows, crops, heat)):
            file = f"{start + offset:03d}-{row[SAMPLE_ID][:12]}.png"
            probability = max(row[PROBABILITIES])
            true = row[LABEL] if row[TARGET] == row[LABEL] else f"{row[LABEL]} ({row[TARGET]})"
            draw_map(out_dir / file, crop, row_heat,
                     f"true: {true} · predicted: {row[PREDICTED]} (p = {probability:.2f})")
            figures.append(_figure(file, row[SOURCE_ID], row, probability))
    index = out_dir / INDEX_FILE
    write_text(index, _page(run_store.run_id, figures, failures))
    return index
