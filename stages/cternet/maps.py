"""Heat-map overlays of CTERNet's pseudo sentiment map S over test images, for inspection.

`write_sentiment_maps` takes the first N evaluated test images of a run, draws each image's
centre crop beside the crop with S laid over it (one PNG per image) and writes an HTML index.
Every text in the page (source ids, labels) comes from the dataset and is escaped.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from affectflow.core.atomic import write_bytes, write_text
from affectflow.core.errors import UserError
from affectflow.core.images import load_rgb
from affectflow.core.runs import RunStore
from affectflow.core.store import SAMPLE_ID, SOURCE_ID
from affectflow.models.cternet.classifier import load_classifier, sentiment_maps
from affectflow.models.cternet.data import eval_geometry
from affectflow.stages.cternet.evaluate import PREDICTED, PROBABILITIES
from affectflow.stages.cternet.train import TARGET
from affectflow.stages.ingest.stage import IMAGE_PATH, LABEL

INDEX_FILE = "index.html"
OVERLAY_ALPHA = 0.5
MIN_DISPLAY_SIDE = 224  # small demo inputs are enlarged so the maps are visible
BATCH_SIZE = 16


def overlay(crop: Image.Image, heat: np.ndarray) -> Image.Image:
    """The crop beside the crop blended with the map in the 'jet' colour map (red = high)."""
    coloured = (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    blended = Image.blend(crop, Image.fromarray(coloured), OVERLAY_ALPHA)
    side = max(crop.width, MIN_DISPLAY_SIDE)
    pair = Image.new("RGB", (2 * side, side), "white")
    pair.paste(crop.resize((side, side), Image.Resampling.BICUBIC), (0, 0))
    pair.paste(blended.resize((side, side), Image.Resampling.BICUBIC), (side, 0))
    return pair


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    """Overlays for the first `n` evaluated test images of the run; returns the HTML index."""
    if n < 1:
        raise UserError(f"--maps {n}: nothing to draw", hint="ask for at least one image")
    evaluation = run_store.stage("cternet_eval")
    if not evaluation.complete:
        raise UserError(f"run {run_store.run_id!r} has no finished cternet_eval stage",
                        hint="run the cternet flow first: affectflow run cternet --config ...")
    evaluated = evaluation.read_all(
        columns=[SAMPLE_ID, LABEL, TARGET, PREDICTED, PROBABILITIES]).slice(0, n).to_pylist()
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
            write_bytes(out_dir / file, _png(overlay(crop, row_heat)))
            probability = max(row[PROBABILITIES])
            figures.append(_figure(file, row[SOURCE_ID], row, probability))
    index = out_dir / INDEX_FILE
    write_text(index, _page(run_store.run_id, figures, failures))
    return index
