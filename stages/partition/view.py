"""`affectflow inspect RUN partition` and the partition's Prefect artifacts: the share table
beside the paper's, thresholds, the planted-mismatch check, samples per partition, the gallery.

Post texts, captions and ANPs are untrusted; control and format characters (ANSI escapes,
bidi overrides) are printed as visible escapes so a post cannot drive the terminal. The
artifacts hold numbers and the run id only, never post text (the gallery escapes what it shows).
"""

from __future__ import annotations

from typing import Any

from affectflow.core.display import printable
from affectflow.core.runs import RunStore
from affectflow.stages.knowledge.view import format_knowledge_label
from affectflow.stages.partition.gallery import write_gallery
from affectflow.stages.partition.samples import PartitionSample, partition_summary, select_samples, share_rows
from affectflow.stages.partition.stage import SCORES
from affectflow.stages.views import MISSING, StageView, file_link, views_dir

GALLERY_FILE = "partition-gallery.html"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1%}"


def share_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"partition": row.name, "count": row.count, "share": _percent(row.share),
             f"paper (sigma {summary['paper']['sigma']:g})": _percent(row.paper_share)}
            for row in share_rows(summary)]


def summary_markdown(run_id: str, summary: dict[str, Any]) -> str:
    records = share_records(summary)
    header = list(records[0])
    lines = [f"### Partition of run `{run_id}`", "", f"{summary['samples']} samples.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(record[key]) for key in header) + " |" for record in records]
    lines += ["", "Thresholds (matched = normalised score strictly greater):"]
    for score in SCORES:
        facts = summary["thresholds"][score]
        cut = ("no valid scores" if facts["threshold_raw"] is None
               else f"raw > {facts['threshold_raw']:.4g}, normalised > {facts['threshold_norm']:.4g}")
        lines.append(f"- {score}: {facts['mode']}, sigma {facts['sigma']:g} ({cut})")
    truth = summary.get("ground_truth")
    if truth:
        lines += ["", "Planted mismatches (ground truth):"]
        for kind in ("factual_mismatch", "emotional_mismatch"):
            facts = truth[kind]
            lines.append(f"- {kind}: precision {_percent(facts['precision'])}, "
                         f"recall {_percent(facts['recall'])}")
    return "\n".join(lines)


def prefect_views(run: RunStore, stage: str) -> list[StageView]:
    """The share table, and the summary with a link to a freshly written HTML gallery."""
    summary = partition_summary(run)
    gallery = write_gallery(run, views_dir(run) / GALLERY_FILE)
    markdown = summary_markdown(run.run_id, summary) + f"\n\nGallery: {file_link(gallery, GALLERY_FILE)}"
    return [StageView("shares", f"partition shares of run {run.run_id} beside the paper's",
                      table=share_records(summary)),
            StageView("summary", f"partition summary of run {run.run_id}", markdown=markdown)]


def share_table(summary: dict[str, Any]) -> list[str]:
    paper_sigma = summary["paper"]["sigma"]
    lines = [f"{'partition':<22}{'count':>9}{'share':>9}  paper (sigma {paper_sigma:g})"]
    lines += [f"{row.name:<22}{row.count:>9}{_percent(row.share):>9}  {_percent(row.paper_share)}"
              for row in share_rows(summary)]
    return lines


def threshold_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["thresholds (matched = normalised score strictly greater than the threshold):"]
    for score in SCORES:
        facts = summary["thresholds"][score]
        if facts["threshold_raw"] is None:
            lines.append(f"  {score:<10} {facts['mode']} sigma {facts['sigma']:g}: no valid scores")
            continue
        lines.append(f"  {score:<10} {facts['mode']} sigma {facts['sigma']:g} -> raw score > "
                     f"{facts['threshold_raw']:.4g} (normalised > {facts['threshold_norm']:.4g}); "
                     f"raw range {facts['min']:.4g} .. {facts['max']:.4g}")
    return lines


def truth_lines(truth: dict[str, Any]) -> list[str]:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"ground truth ({truth['labelled_samples']} labelled samples, "
             f"{truth['unlabelled_samples']} without a label):"]
    for kind in ("factual_mismatch", "emotional_mismatch"):
        facts = truth[kind]
        lines.append(f"  {kind:<19} precision {number(facts['precision'])}  recall "
                     f"{number(facts['recall'])}  ({facts['true_positive']} found of "
                     f"{facts['planted']} planted, {facts['flagged']} flagged)")
    lines.append(f"  expected partition  {number(truth['partition_accuracy'])} of labelled samples")
    return lines


def sample_lines(sample: PartitionSample) -> list[str]:
    origin = ", ".join(f"{key} {printable(value, 40)}" for key, value in
                       (("source", sample.source_id), ("label", sample.label)) if value)
    lines = [f"  {sample.sample_id[:16]}  factual {sample.factual_score:.4f} "
             f"(norm {sample.factual_norm:.3f})  emotional {sample.emotional_score:.4f} "
             f"(norm {sample.emotional_norm:.3f})" + (f"  [{origin}]" if origin else "")]
    if sample.text is not None:
        lines.append(f"    text: {printable(sample.text)}")
    if sample.anps:
        anps = ", ".join(f"{printable(anp, 40)} {score:.2f}"
                         for anp, score in zip(sample.anps, sample.anp_scores))
        lines.append(f"    ANPs: {anps}")
    if sample.caption:
        lines.append(f"    caption: {printable(sample.caption)}")
    if sample.triplets:
        triplets = "; ".join(f"{t['subject']} / {t['verb']} / {t['object']}"
                             for t in sample.triplets)
        lines.append(f"    triplets: {printable(triplets)}")
    if sample.knowledge_label is not None:
        label = format_knowledge_label(sample.knowledge_label, sample.knowledge_label_probability)
        lines.append(f"    knowledge label: {printable(label)}")
    if sample.clusters:
        lines.append("    clusters: " + " ".join(f"{k}={v}" for k, v in sample.clusters.items()))
    return lines


def partition_report(run: RunStore, samples: int = 5) -> str:
    """Share table, thresholds, optional ground-truth check and `samples` rows per partition."""
    manifest = run.stage("partition").manifest
    summary = partition_summary(run)
    rejected = ", ".join(f"{reason} {count}" for reason, count in
                         sorted(manifest["rejects_by_reason"].items()))
    lines = [f"partition of run {run.run_id}: {summary['samples']} samples, "
             f"{manifest['rows_rejected']} rejected" + (f" ({rejected})" if rejected else ""),
             *threshold_lines(summary), "", *share_table(summary)]
    if "ground_truth" in summary:
        lines += ["", *truth_lines(summary["ground_truth"])]
    chosen = select_samples(run, samples) if samples > 0 else {}
    for name, group in chosen.items():
        count = summary["partitions"][name]["count"]
        lines += ["", f"{name}: {len(group)} of {count} samples"]
        for sample in group:
            lines += sample_lines(sample)
    figures = ", ".join(summary.get("figures", []))
    if figures:
        lines += ["", f"figures in {run.stage('partition').path}: {figures}"]
    return "\n".join(lines)
