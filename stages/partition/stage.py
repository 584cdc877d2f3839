"""`partition`: split samples into strong / partial-emotional / partial-factual / weak (PACL stage 1).

A sample is factual-matched when its normalised factual score is strictly greater than the
factual threshold, and likewise for the emotional score (docs/partition.md explains the
threshold modes and the default). `prepare` streams the two score columns once (twice in
`quantile` mode) to fix the thresholds; shards are then processed independently; `finalize`
writes `summary.json` and the pictures in `figures/`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from affectflow.core.atomic import write_json
from affectflow.core.columns import read_columns
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact
from affectflow.stages.emotional import EMOTIONAL_SCORE
from affectflow.stages.factual import FACTUAL_SCORE
from affectflow.stages.ground_truth import match_truth
from affectflow.stages.param_types import GroundTruthCsv
from affectflow.stages.partition.align import AlignedShard, align_scores, read_scores
from affectflow.stages.partition.stats import Mode, ScoreScale, ScoreStatistics, load_scales, save_scales
from affectflow.stages.partition.truth import TruthCheck

PARTITIONS = ("strong", "partial_emotional", "partial_factual", "weak")
# Reported by the PACL paper on TumEmo at sigma 0.7; "partial" is both partial kinds together.
PAPER_SHARES = {"strong": 0.22, "partial": 0.51, "weak": 0.27}
PAPER_SIGMA = 0.7
SCORES = ("factual", "emotional")
SUMMARY_FILE = "summary.json"
FIGURES_DIR = "figures"
FIGURE_FILES = {"factual": "factual_histogram.png", "emotional": "emotional_histogram.png",
                "density": "score_density.png"}

FACTUAL_NORM = "factual_norm"
EMOTIONAL_NORM = "emotional_norm"
FACTUAL_MATCHED = "factual_matched"
EMOTIONAL_MATCHED = "emotional_matched"
PARTITION = "partition"
SCORE_COLUMNS = {"factual": FACTUAL_SCORE, "emotional": EMOTIONAL_SCORE}
NORM_COLUMNS = {"factual": FACTUAL_NORM, "emotional": EMOTIONAL_NORM}
MATCHED_COLUMNS = {"factual": FACTUAL_MATCHED, "emotional": EMOTIONAL_MATCHED}

SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (FACTUAL_SCORE, pa.float32()),
    (EMOTIONAL_SCORE, pa.float32()),
    (FACTUAL_NORM, pa.float64()),
    (EMOTIONAL_NORM, pa.float64()),
    (FACTUAL_MATCHED, pa.bool_()),
    (EMOTIONAL_MATCHED, pa.bool_()),
    (PARTITION, pa.string()),
])

_SUMMARY_COLUMNS = [SAMPLE_ID, FACTUAL_SCORE, EMOTIONAL_SCORE, FACTUAL_MATCHED, EMOTIONAL_MATCHED,
                    PARTITION]
# Index (not factual matched) * 2 + (not emotional matched) -> partition name.
_BY_MATCH = np.array(["strong", "partial_factual", "partial_emotional", "weak"], dtype=object)


class PartitionParams(StageParams):
    """Threshold mode and sigma per score, and optional planted ground truth to check against."""

    factual_mode: Mode = Field("quantile", description="absolute | minmax | quantile")
    emotional_mode: Mode = Field("quantile", description="absolute | minmax | quantile")
    factual_sigma: float = Field(0.5, description="threshold on the factual mode's scale")
    emotional_sigma: float = Field(0.5, description="threshold on the emotional mode's scale")
    ground_truth: GroundTruthCsv = None

    @model_validator(mode="after")
    def _sigma_in_range(self) -> PartitionParams:
        for score in SCORES:
            mode, sigma = getattr(self, f"{score}_mode"), getattr(self, f"{score}_sigma")
            low = -1.0 if mode == "absolute" else 0.0
            if not low <= sigma <= 1.0:
                raise ValueError(f"{score}_sigma {sigma} is outside [{low:g}, 1] for "
                                 f"{score}_mode {mode!r}")
        return self

    def mode(self, score: str) -> Mode:
        return getattr(self, f"{score}_mode")

    def sigma(self, score: str) -> float:
        return getattr(self, f"{score}_sigma")


def assign_partitions(factual_matched: np.ndarray, emotional_matched: np.ndarray) -> np.ndarray:
    return _BY_MATCH[(~factual_matched).astype(int) * 2 + (~emotional_matched).astype(int)]


class PartitionStage(Stage[PartitionParams]):
    name = "partition"
    inputs = ("factual", "emotional")
    reads = (TableRef("factual", (SAMPLE_ID, FACTUAL_SCORE)),
             TableRef("emotional", (SAMPLE_ID, EMOTIONAL_SCORE)))
    Params = PartitionParams
    schema = SCHEMA
    # Each shard takes milliseconds; a Prefect task per shard would cost more than the work.
    shard_parallel = False

    def source_fingerprint(self, params: PartitionParams, settings: Any) -> str | None:
        return hash_file(params.ground_truth) if params.ground_truth else None

    def _aligned(self, ctx: StageContext[PartitionParams], shard_id: int) -> AlignedShard:
        return align_scores(read_scores(ctx.input("factual"), shard_id, FACTUAL_SCORE),
                            read_scores(ctx.input("emotional"), shard_id, EMOTIONAL_SCORE))

    def prepare(self, ctx: StageContext[PartitionParams]) -> list[int]:
        """Stream the score columns to fix each score's scale; save it in the plan folder."""
        params = ctx.params
        shard_ids = sorted(set(ctx.input("factual").shard_ids())
                           | set(ctx.input("emotional").shard_ids()))
        stats = {score: ScoreStatistics(params.mode(score), params.sigma(score))
                 for score in SCORES}
        if params.ground_truth is not None and not _ingest(ctx).complete:
            raise UserError("partition.ground_truth needs the ingest stage's source ids, but "
                            f"{_ingest(ctx).path} is not a finished stage",
                            hint="run ingest in the same run, or unset partition.ground_truth")
        for shard_id in shard_ids:
            aligned = self._aligned(ctx, shard_id)
            for score in SCORES:
                stats[score].add(getattr(aligned, score)[aligned.kept])
        second_pass = [score for score in SCORES if stats[score].needs_bucket_pass]
        if second_pass:
            for score in second_pass:
                stats[score].start_bucket_pass()
            for shard_id in shard_ids:
                aligned = self._aligned(ctx, shard_id)
                for score in second_pass:
                    stats[score].add_to_bucket(getattr(aligned, score)[aligned.kept])
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        save_scales(ctx.work_dir, {score: stats[score].scale() for score in SCORES})
        return shard_ids

    def setup(self, ctx: StageContext[PartitionParams]) -> dict[str, ScoreScale]:
        return load_scales(ctx.work_dir)

    def process(self, ctx: StageContext[PartitionParams], state: dict[str, ScoreScale],
                shard_id: int) -> ShardOutput:
        aligned = self._aligned(ctx, shard_id)
        kept = aligned.kept
        columns: dict[str, Any] = {SAMPLE_ID: aligned.sample_ids.filter(pa.array(kept))}
        matched = {}
        for score in SCORES:
            raw = getattr(aligned, score)[kept]
            norm = state[score].normalise(raw)
            matched[score] = state[score].matched(norm)
            columns[SCORE_COLUMNS[score]] = raw
            columns[NORM_COLUMNS[score]] = norm
        for score in SCORES:
            columns[MATCHED_COLUMNS[score]] = matched[score]
        columns[PARTITION] = assign_partitions(matched["factual"], matched["emotional"])
        return ShardOutput(rows_in=aligned.rows_in,
                           tables={MAIN_TABLE: pa.table(columns, schema=SCHEMA)},
                           rejects=aligned.rejects())

    def finalize(self, ctx: StageContext[PartitionParams]) -> dict[str, Any]:
        """Counts, shares and thresholds (next to the paper's), figures, optional truth check."""
        from affectflow.stages.partition.figures import ScoreHistograms, draw_density, draw_histogram

        params = ctx.params
        scales = load_scales(ctx.work_dir)
        output = StageArtifact(ctx.output_dir)
        histograms = ScoreHistograms.for_scales(scales["factual"], scales["emotional"])
        counts = dict.fromkeys(PARTITIONS, 0)
        truth = TruthCheck(match_truth(params.ground_truth)) if params.ground_truth else None
        for shard_id in output.shard_ids():
            table = read_columns(output.shard_path(shard_id), _SUMMARY_COLUMNS)
            histograms.add(table[FACTUAL_SCORE].to_numpy(), table[EMOTIONAL_SCORE].to_numpy())
            for row in pc.value_counts(table[PARTITION]).to_pylist():
                counts[row["values"]] += row["counts"]
            if truth is not None:
                truth.add(_source_ids(_ingest(ctx), shard_id, table[SAMPLE_ID]),
                          table[FACTUAL_MATCHED].to_numpy(),
                          table[EMOTIONAL_MATCHED].to_numpy())
        summary = share_summary(counts, scales)
        figures = ctx.output_dir / FIGURES_DIR
        for score in SCORES:
            draw_histogram(figures / FIGURE_FILES[score], f"{score} score",
                           getattr(histograms, f"{score}_edges"),
                           getattr(histograms, f"{score}_counts"), scales[score])
        draw_density(figures / FIGURE_FILES["density"], histograms, scales["factual"],
                     scales["emotional"], {name: summary["partitions"][name]["share"]
                                           for name in PARTITIONS})
        summary["figures"] = [f"{FIGURES_DIR}/{name}" for name in FIGURE_FILES.values()]
        if truth is not None:
            summary["ground_truth"] = truth.report()
        write_json(ctx.output_dir / SUMMARY_FILE, summary)
        return summary


def _ingest(ctx: StageContext[PartitionParams]) -> StageArtifact:
    """The run's ingest artifact: not a declared input (factual already depends on it), read
    only to map sample ids to the source ids a ground-truth file uses."""
    return StageArtifact(ctx.run_dir / "ingest")


def _source_ids(ingest: StageArtifact, shard_id: int, sample_ids: pa.ChunkedArray) -> list[str | None]:
    """source_id of each sample, looked up in the matching ingest shard."""
    if not ingest.shard_path(shard_id).is_file():
        return [None] * len(sample_ids)
    table = read_columns(ingest.shard_path(shard_id), [SAMPLE_ID, SOURCE_ID])
    position = pc.index_in(sample_ids, value_set=table[SAMPLE_ID].combine_chunks())
    return table[SOURCE_ID].combine_chunks().take(position).to_pylist()


def share_summary(counts: dict[str, int], scales: dict[str, ScoreScale]) -> dict[str, Any]:
    """Counts and shares per partition beside the paper's, plus the thresholds used."""
    total = sum(counts.values())

    def share(count: int) -> float:
        return count / total if total else 0.0

    partial = counts["partial_emotional"] + counts["partial_factual"]
    return {
        "samples": total,
        "partitions": {name: {"count": counts[name], "share": share(counts[name])}
                       for name in PARTITIONS},
        "partial": {"count": partial, "share": share(partial)},
        "paper": {"sigma": PAPER_SIGMA, **PAPER_SHARES},
        "thresholds": {score: scales[score].describe() for score in SCORES},
    }
