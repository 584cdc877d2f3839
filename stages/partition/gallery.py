"""`affectflow inspect RUN partition --html FILE`: one self-contained HTML gallery of the partition.

Everything is inline (thumbnails and score pictures as data URIs, CSS, one small script), so
the file can be mailed or archived. Post texts, captions, ANPs and triplets are untrusted:
every value goes through `html.escape`, the script only reads numeric data attributes, and a
Content-Security-Policy allows no script but the gallery's own (pinned by its SHA-256), so a
post containing `<script>` shows as text and runs nothing even if escaping were ever missed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image

from affectflow.core.atomic import write_text
from affectflow.core.images import load_rgb
from affectflow.core.runs import RunStore
from affectflow.stages.knowledge.view import format_knowledge_label
from affectflow.stages.partition.samples import PartitionSample, partition_summary, select_samples, share_rows
from affectflow.stages.partition.stage import PARTITIONS, SCORES

SORTS = {"order:asc": "sample id", "factual:desc": "factual score, high first",
         "factual:asc": "factual score, low first", "emotional:desc": "emotional score, high first",
         "emotional:asc": "emotional score, low first"}

SCRIPT = """
(function () {
  var grid = document.getElementById("grid");
  var filter = document.getElementById("filter");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  var cards = Array.prototype.slice.call(grid.children);
  function allowed(select, value) {
    return Array.prototype.some.call(select.options, function (o) { return o.value === value; });
  }
  function apply() {
    var parts = sort.value.split(":"), key = parts[0], sign = parts[1] === "desc" ? -1 : 1;
    cards.sort(function (a, b) {
      var d = parseFloat(a.dataset[key]) - parseFloat(b.dataset[key]);
      return d !== 0 ? sign * d : a.dataset.order - b.dataset.order;
    });
    var visible = 0;
    cards.forEach(function (card) {
      card.hidden = filter.value !== "all" && card.dataset.partition !== filter.value;
      if (!card.hidden) { visible += 1; }
      grid.appendChild(card);
    });
    shown.textContent = visible + " of " + cards.length + " samples shown";
  }
  location.hash.slice(1).split("&").forEach(function (pair) {
    var kv = pair.split("="), value = decodeURIComponent(kv[1] || "");
    if (kv[0] === "partition" && allowed(filter, value)) { filter.value = value; }
    if (kv[0] === "sort" && allowed(sort, value)) { sort.value = value; }
  });
  filter.addEventListener("change", apply);
  sort.addEventListener("change", apply);
  apply();
  document.body.dataset.ready = "yes";
})();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures img { max-width: 480px; width: 100%; border: 1px solid #ddd; background: #fff; }
.controls { margin: 1em 0; display: flex; gap: 1.5em; align-items: center; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 1em; }
.card { background: #fff; border: 1px solid #ddd; border-top: 4px solid #999; padding: .6em;
        overflow-wrap: anywhere; }
.card[hidden] { display: none; }
.card img, .card .noimage { width: 100%; height: 180px; object-fit: contain; background: #eee; }
.card .noimage { display: flex; align-items: center; justify-content: center; color: #777; }
.card .text { font-weight: 600; margin: .4em 0; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: .1em .6em; margin: 0;
           font-size: 12px; }
.card dt { color: #666; }
.card dd { margin: 0; }
.tag { display: inline-block; font-size: 11px; padding: 0 .5em; border-radius: 3px; color: #fff; }
.strong { border-top-color: #2ca02c; } .tag.strong { background: #2ca02c; }
.partial_emotional { border-top-color: #9467bd; } .tag.partial_emotional { background: #9467bd; }
.partial_factual { border-top-color: #1f77b4; } .tag.partial_factual { background: #1f77b4; }
.weak { border-top-color: #d62728; } .tag.weak { background: #d62728; }
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(path: str | None, size: int) -> str | None:
    """A small JPEG data URI of the image, or None when it cannot be read."""
    if not path:
        return None
    try:
        thumb = load_rgb(path, draft=(size, size))
        thumb.thumbnail((size, size))
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=75)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return data_uri(buffer.getvalue(), "image/jpeg")


def _share_table(summary: dict[str, Any], shown: dict[str, int]) -> str:
    rows = []
    for row in share_rows(summary):
        paper = "-" if row.paper_share is None else f"{row.paper_share:.1%}"
        partition = row.name if row.name in PARTITIONS else ""
        rows.append(f'<tr><td>{esc(row.name)}</td>'
                    f'<td class="count" data-partition="{esc(partition)}">{row.count}</td>'
                    f'<td>{row.share:.1%}</td><td>{esc(paper)}</td>'
                    f'<td>{shown[partition] if partition else ""}</td></tr>')
    sigma = summary["paper"]["sigma"]
    return ('<table id="shares"><thead><tr><th>partition</th><th>count</th><th>share</th>'
            f'<th>paper (sigma {esc(sigma)})</th><th>in gallery</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _thresholds(summary: dict[str, Any]) -> str:
    items = []
    for score in SCORES:
        facts = summary["thresholds"][score]
        cut = ("no valid scores" if facts["threshold_raw"] is None else
               f"raw score &gt; {facts['threshold_raw']:.4g} "
               f"(normalised &gt; {facts['threshold_norm']:.4g})")
        items.append(f"<li>{esc(score)}: {esc(facts['mode'])}, sigma {esc(facts['sigma'])} "
                     f"&rarr; matched when {cut}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _figures(folder: Path, names: list[str]) -> str:
    parts = []
    for name in names:
        path = folder / name
        if path.is_file():
            uri = data_uri(path.read_bytes(), "image/png")
            parts.append(f'<figure><img src="{esc(uri)}" alt="{esc(name)}">'
                         f'<figcaption>{esc(name)}</figcaption></figure>')
    return f'<div class="figures">{"".join(parts)}</div>'


def _card(sample: PartitionSample, order: int, thumb_px: int) -> str:
    uri = thumbnail_uri(sample.image_path, thumb_px)
    image = (f'<img src="{esc(uri)}" alt="image of sample {esc(sample.sample_id[:12])}">' if uri
             else '<div class="noimage">image unavailable</div>')
    facts = [("factual", f"{sample.factual_score:.4f} (norm {sample.factual_norm:.3f})"),
             ("emotional", f"{sample.emotional_score:.4f} (norm {sample.emotional_norm:.3f})")]
    if sample.anps:
        facts.append(("ANPs", ", ".join(f"{anp} {score:.2f}"
                                        for anp, score in zip(sample.anps, sample.anp_scores))))
    if sample.caption:
        facts.append(("caption", sample.caption))
    if sample.triplets:
        facts.append(("triplets", "; ".join(f"({t['subject']}, {t['verb']}, {t['object']})"
                                            for t in sample.triplets)))
    if sample.knowledge_text:
        facts.append(("knowledge", sample.knowledge_text))
    if sample.knowledge_label is not None:
        facts.append(("knowledge label", format_knowledge_label(
            sample.knowledge_label, sample.knowledge_label_probability)))
    if sample.clusters:
        facts.append(("clusters", " ".join(f"{k}={v}" for k, v in sample.clusters.items())))
    origin = [value for value in (sample.source_id, sample.label) if value]
    if origin:
        facts.append(("source", " · ".join(origin)))
    facts.append(("sample", sample.sample_id))
    details = "".join(f"<dt>{esc(key)}</dt><dd>{esc(value)}</dd>" for key, value in facts)
    return (f'<article class="card {esc(sample.partition)}" data-partition="{esc(sample.partition)}"'
            f' data-factual="{sample.factual_score!r}" data-emotional="{sample.emotional_score!r}"'
            f' data-order="{order}">{image}'
            f'<span class="tag {esc(sample.partition)}">{esc(sample.partition)}</span>'
            f'<p class="text">{esc(sample.text or "")}</p><dl>{details}</dl></article>')


def render_gallery(run: RunStore, per_partition: int = 60, thumb_px: int = 160) -> str:
    """The gallery page as a string (at most `per_partition` cards per partition)."""
    summary = partition_summary(run)
    samples = select_samples(run, per_partition)
    shown = {name: len(samples[name]) for name in PARTITIONS}
    ordered = sorted((s for group in samples.values() for s in group), key=lambda s: s.sample_id)
    cards = "".join(_card(sample, order, thumb_px) for order, sample in enumerate(ordered))
    options = "".join(f'<option value="{esc(name)}">{esc(name)}</option>'
                      for name in ("all", *PARTITIONS))
    sorts = "".join(f'<option value="{esc(value)}">{esc(label)}</option>'
                    for value, label in SORTS.items())
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode()
    policy = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              f"script-src 'sha256-{script_hash}'")
    title = f"affectflow partition gallery · run {run.run_id}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(policy)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><style>{STYLE}</style></head><body>'
        f'<h1>{esc(title)}</h1>'
        f'<p>{summary["samples"]} samples partitioned. Up to {per_partition} per partition are '
        f'shown (a fixed random sample: the smallest sample ids).</p>'
        f'{_thresholds(summary)}{_share_table(summary, shown)}'
        f'{_figures(run.stage("partition").path, summary.get("figures", []))}'
        f'<div class="controls"><label>partition <select id="filter">{options}</select></label>'
        f'<label>sort by <select id="sort">{sorts}</select></label><span id="shown"></span></div>'
        f'<div id="grid">{cards}</div><script>{SCRIPT}</script></body></html>')


def write_gallery(run: RunStore, out: Path, per_partition: int = 60, thumb_px: int = 160) -> Path:
    """Write the gallery atomically to `out` and return the path."""
    write_text(out, render_gallery(run, per_partition, thumb_px))
    return out
