"""`cluster`: factual and emotional pseudo-labels by k-means (PACL stage 2, no gradients).

Factual labels cluster the image features of the visual encoder PACL will enhance; emotional
labels cluster the frozen text tower's features of the post text (the teacher stage's
`text_features`). k-means needs every point at once, so the stage is global: `prepare` encodes
(or reuses cached) image features, joins the inputs, runs faiss k-means once per side and K and
writes each shard's labels and rejects to the plan folder; `process` then copies one shard into
the artifact, which keeps the runner's per-shard accounting and resume. docs/cluster.md has the
details and the reasons.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file, hash_value
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, StageArtifact, make_rejects
from affectflow.models.specs import check_visual_spec, weights_fingerprint
from affectflow.stages.cluster.features import (
    FEATURE_COLUMN,
    LISTING_COLUMNS,
    EncoderSpec,
    FeatureCache,
    ensure_image_features,
)
from affectflow.stages.cluster.inputs import AlignedShard, align_shard, read_if_present
from affectflow.stages.cluster.kmeans import (
    Init,
    KmeansResult,
    faiss_uses_gpu,
    kmeans,
    kmeans_plus_plus_available,
    l2_normalise,
)
from affectflow.stages.cluster.report import SIDES, add_truth, draw_sweep, side_report
from affectflow.stages.ground_truth import EMOTION_COLUMNS, read_ground_truth
from affectflow.stages.param_types import Device, GroundTruthCsv, VisualEncoder
from affectflow.stages.teacher import TEXT_FEATURE, TEXT_FEATURES

IMAGE_FEATURES = "image_features"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.json"
SWEEP_FIGURE = "figures/cluster_sweep.png"


def label_column(side: str, k: int) -> str:
    """`factual_k2`, `emotional_k10`, ...: one pseudo-label column per side and K."""
    return f"{side}_k{k}"


def main_schema(ks: list[int] | tuple[int, ...]) -> pa.Schema:
    return pa.schema([(SAMPLE_ID, pa.string())]
                     + [(label_column(side, k), pa.int32()) for side in SIDES for k in ks])


def label_columns_of(artifact: StageArtifact) -> list[str]:
    """The label columns a finished cluster artifact holds: one per side and configured K."""
    return [label_column(side, k) for side in SIDES for k in artifact.manifest["params"]["ks"]]


class ClusterParams(StageParams):
    """The encoder whose image features are clustered, the K values and the k-means settings."""

    visual_encoder: VisualEncoder = Field(
        "timm:resnet50", description="timm:<name>[:ckpt], open_clip:<arch>[:tag|ckpt] or "
                                     "open_clip:local-dir:<dir> (the encoder PACL will enhance)")
    pretrained: bool = Field(True, description="false: random init (seeded by `seed`)")
    ks: list[int] = Field(default_factory=lambda: [2], description="cluster counts, e.g. [2, 3, 6]")
    niter: int = Field(25, ge=1, description="k-means (Lloyd) iterations")
    init: Init = Field("kmeans++", description="initial centroids: kmeans++ or random")
    nredo: int = Field(1, ge=1, description="k-means restarts; the best objective is kept")
    seed: int = Field(0, description="k-means initialisation (and random-init encoder) seed")
    batch_size: int = Field(64, ge=1)
    device: Device = None
    ground_truth: GroundTruthCsv = None

    @model_validator(mode="after")
    def _pretrained_open_clip_names_weights(self) -> ClusterParams:
        check_visual_spec(self.visual_encoder, self.pretrained)
        return self

    @field_validator("ks")
    @classmethod
    def _ks_are_distinct_and_at_least_two(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("ks is empty; list at least one cluster count, e.g. [2]")
        small = [k for k in value if k < 2]
        if small:
            raise ValueError(f"ks {small} are below 2 (one cluster labels nothing); use K >= 2")
        if len(set(value)) != len(value):
            raise ValueError(f"ks {value} repeats a value; list each K once")
        return sorted(value)

    @field_validator("init")
    @classmethod
    def _init_is_supported(cls, value: Init) -> Init:
        if value == "kmeans++" and not kmeans_plus_plus_available():
            raise ValueError("init 'kmeans++' needs faiss >= 1.14; upgrade faiss-cpu / "
                             "faiss-gpu-cu12 or set init: random")
        return value


def check_ks(ks: list[int], available: int, what: str) -> None:
    """Plan-time error when a K exceeds the number of points k-means would get."""
    too_large = [k for k in ks if k > available]
    if too_large:
        raise UserError(f"cluster.ks {too_large} exceed the {available} {what}; k-means needs at "
                        f"least K points",
                        hint=f"use cluster.ks values <= {available}, or add more data")


class ClusterStage(Stage[ClusterParams]):
    name = "cluster"
    uses_accelerator = True
    inputs = ("ingest", "teacher", "partition")
    reads = (TableRef("ingest", tuple(LISTING_COLUMNS)),
             TableRef("teacher", (SAMPLE_ID, TEXT_FEATURE), TEXT_FEATURES),
             TableRef("partition", (SAMPLE_ID,)))
    Params = ClusterParams
    side_schemas: ClassVar[dict[str, pa.Schema]] = {IMAGE_FEATURES: pa.schema([(SAMPLE_ID, pa.string()),
                                               (FEATURE_COLUMN, pa.list_(pa.float16()))])}

    def output_schema(self, params: ClusterParams) -> pa.Schema:
        """sample_id plus one int32 column per side and configured K."""
        return main_schema(params.ks)

    def source_fingerprint(self, params: ClusterParams, settings: Any) -> str:
        """The files behind the visual encoder spec and the ground-truth CSV."""
        return hash_value({"weights": weights_fingerprint("visual", params.visual_encoder),
                           "ground_truth": hash_file(params.ground_truth)
                           if params.ground_truth else None})

    def prepare(self, ctx: StageContext[ClusterParams]) -> list[int]:
        """Features, join, k-means for every side and K; per-shard results into the plan folder."""
        params = ctx.params
        ingest = ctx.input("ingest")
        check_ks(params.ks, ctx.input("partition").num_rows(),
                 "samples kept by the partition stage")
        truth = (read_ground_truth(params.ground_truth, EMOTION_COLUMNS)
                 if params.ground_truth else None)
        listing = {shard_id: ingest.read_shard(shard_id, LISTING_COLUMNS)
                   for shard_id in ingest.shard_ids()}
        encoder = EncoderSpec(params.visual_encoder, params.pretrained, params.seed)
        cache = FeatureCache.for_images(Path(ctx.settings.artifact_root), encoder, listing)
        encoded = ensure_image_features(cache, encoder, listing, params.batch_size,
                                        ctx.settings, params.device)
        aligned = {shard_id: self._align(ctx, shard_id, rows, cache)
                   for shard_id, rows in listing.items()}
        samples = sum(len(shard.sample_ids) for shard in aligned.values())
        check_ks(params.ks, samples,
                 "samples with an image feature, a text feature and a partition")

        dims, results = cluster_sides(aligned, params)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        write_planned_shards(ctx.work_dir, aligned, results)
        report: dict[str, Any] = {
            "samples": samples, "ks": params.ks, "niter": params.niter, "init": params.init,
            "nredo": params.nredo, "seed": params.seed,
            "faiss_device": "gpu" if faiss_uses_gpu() else "cpu",
            "visual_encoder": params.visual_encoder,
            "feature_cache": {"folder": str(cache.folder), "images_encoded": encoded},
            **{side: side_report(results[side], dims[side]) for side in SIDES}}
        if truth is not None:
            source_ids = [sid for shard in aligned.values() for sid in shard.source_ids]
            add_truth(report, results, source_ids, truth)
        write_json(ctx.work_dir / REPORT_FILE, report)
        return list(listing)

    def _align(self, ctx: StageContext[ClusterParams], shard_id: int, listing: pa.Table,
               cache: FeatureCache) -> AlignedShard:
        return align_shard(
            listing, cache.read(shard_id),
            read_if_present(ctx.input("teacher"), shard_id, [SAMPLE_ID, TEXT_FEATURE],
                            TEXT_FEATURES),
            read_if_present(ctx.input("partition"), shard_id, [SAMPLE_ID], MAIN_TABLE))

    def setup(self, ctx: StageContext[ClusterParams]) -> FeatureCache:
        report = json.loads((ctx.work_dir / REPORT_FILE).read_text())
        return FeatureCache(Path(report["feature_cache"]["folder"]))

    def process(self, ctx: StageContext[ClusterParams], state: FeatureCache,
                shard_id: int) -> ShardOutput:
        """Copy the planned labels and rejects of one shard, plus its kept image features."""
        labels = pq.read_table(ctx.work_dir / planned_name("labels", shard_id))
        rejects = pq.read_table(ctx.work_dir / planned_name("rejects", shard_id))
        rows_in = pq.read_metadata(ctx.input("ingest").shard_path(shard_id)).num_rows
        part = state.read(shard_id)
        positions = pc.index_in(labels[SAMPLE_ID], value_set=part[SAMPLE_ID])
        side = pa.table({SAMPLE_ID: labels[SAMPLE_ID],
                         FEATURE_COLUMN: part[FEATURE_COLUMN].take(positions)})
        return ShardOutput(rows_in=rows_in, tables={MAIN_TABLE: labels, IMAGE_FEATURES: side},
                           rejects=rejects)

    def finalize(self, ctx: StageContext[ClusterParams]) -> dict[str, Any]:
        """The plan-time report plus the K-sweep figure; also saved as summary.json."""
        report = json.loads((ctx.work_dir / REPORT_FILE).read_text())
        draw_sweep(ctx.output_dir / SWEEP_FIGURE, report)
        report["figures"] = [SWEEP_FIGURE]
        write_json(ctx.output_dir / SUMMARY_FILE, report)
        return report


def cluster_sides(aligned: dict[int, AlignedShard], params: ClusterParams
                  ) -> tuple[dict[str, int], dict[str, dict[int, KmeansResult]]]:
    """Feature width and k-means result per K, for image (factual) and text (emotional)."""
    vectors = {"factual": [shard.image for shard in aligned.values()],
               "emotional": [shard.text for shard in aligned.values()]}
    dims, results = {}, {}
    for side in SIDES:
        points = l2_normalise(np.concatenate(vectors[side]))
        dims[side] = points.shape[1]
        results[side] = {k: kmeans(points, k, params.niter, params.seed, init=params.init,
                                   nredo=params.nredo, label=f"cluster {side}")
                         for k in params.ks}
    return dims, results


def planned_name(kind: str, shard_id: int) -> str:
    return f"{kind}-{shard_id:05d}.parquet"


def write_planned_shards(work_dir: Path, aligned: dict[int, AlignedShard],
                         results: dict[str, dict[int, KmeansResult]]) -> None:
    """Slice the global labels back into ingest shards (kept samples are in shard order)."""
    offset = 0
    for shard_id, shard in aligned.items():
        end = offset + len(shard.sample_ids)
        columns: dict[str, Any] = {SAMPLE_ID: pa.array(shard.sample_ids, pa.string())}
        for side in SIDES:
            for k, result in results[side].items():
                columns[label_column(side, k)] = pa.array(result.labels[offset:end], pa.int32())
        write_parquet(work_dir / planned_name("labels", shard_id), pa.table(columns))
        write_parquet(work_dir / planned_name("rejects", shard_id), make_rejects(shard.rejects))
        offset = end
