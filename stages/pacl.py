"""`pacl`: partitioned adaptive contrastive pretraining of a visual encoder (PACL stage 3).

Shards join, per sample, the partition, the factual/emotional cluster ids (column pair
`factual_k{k}` / `emotional_k{k}`) and the frozen text features, and check that training
images still decode; a sample missing any of them becomes a reject with a reason. Training
needs every shard, so it runs in `finalize`: the training set is written as a job folder in
the stage's private work area and trained in this process or under torchrun. Checkpoints live
there too, so rerunning an interrupted stage (same fingerprint) resumes where it stopped.

Outputs: `model.pt` (both towers), `initial_model.pt` (the same architecture before any step:
the "before PACL" encoder), `backbone.pt` (the visual tower alone), the `history` table (one
row per optimiser step), `loss_curve.png`, and the summary in the manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_value
from affectflow.core.stage import ShardOutput, Stage, StageContext
from affectflow.core.store import MAIN_TABLE, StageArtifact, make_rejects
from affectflow.models import (pacl, pacl_losses, pacl_train, pacl_train_augment,
                               pacl_train_checkpoint, pacl_train_dist, pacl_train_sampler,
                               pacl_train_schedule)
from affectflow.models.pacl_losses import ALL_PARTITIONS
from affectflow.models.pacl_train import PaclTrainingSet
from affectflow.models.pacl_train_checkpoint import INITIAL_FILE, load_torch
from affectflow.stages import pacl_images, pacl_outputs, pacl_params, pacl_worker
from affectflow.stages.batching import prefetched_image_batches
from affectflow.stages.cluster_features import weights_fingerprint
from affectflow.stages.factual import column_vectors
from affectflow.stages.pacl_outputs import HISTORY, HISTORY_SCHEMA, LOSS_CURVE_FILE
from affectflow.stages.pacl_params import PaclParams

TEXT_FEATURES = "text_features"
PARTITION_IDS = {part.key: int(part) for part in ALL_PARTITIONS}
JOB_DIR = "training"
# Settings of the emotional stage's text encoder that zero-shot prompts must be encoded with.
TEXT_ENCODER_KEYS = ("text_encoder", "pooling", "normalize_tweets", "max_length")

SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("split", pa.string()),
    ("partition", pa.string()),
    ("factual_cluster", pa.int32()),
    ("emotional_cluster", pa.int32()),
])


def _decoded(image: Any) -> torch.Tensor:
    """Preprocess for the image check: decoding is the check, the pixels are not kept."""
    return torch.ones(1)


def _rows_by_id(artifact: StageArtifact, shard_id: int, columns: list[str],
                table: str = MAIN_TABLE) -> dict[str, dict[str, Any]]:
    """One input shard keyed by sample_id (empty when the input has no such shard)."""
    if not artifact.shard_path(shard_id, table).is_file():
        return {}
    rows = artifact.read_shard(shard_id, columns, table=table)
    return {row["sample_id"]: row for row in rows.to_pylist()}


class PaclStage(Stage):
    name = "pacl"
    inputs = ("ingest", "emotional", "partition", "cluster")
    Params = PaclParams
    schema = SCHEMA
    side_schemas = {HISTORY: HISTORY_SCHEMA}

    code_modules = (pacl_params, pacl_images, pacl_outputs, pacl_worker, pacl, pacl_losses,
                    pacl_train, pacl_train_augment, pacl_train_checkpoint, pacl_train_dist,
                    pacl_train_sampler, pacl_train_schedule)

    def source_fingerprint(self, params: PaclParams, settings: Any) -> str:  # type: ignore[override]
        """The local weights behind the visual encoder spec, if any: rewriting them retrains."""
        return hash_value([params.visual_encoder, weights_fingerprint(params.visual_encoder)])

    def prepare(self, ctx: StageContext) -> list[int]:
        params: PaclParams = ctx.params  # type: ignore[assignment]
        columns = set(ctx.input("cluster").schema().names)
        wanted = {f"factual_k{params.k}", f"emotional_k{params.k}"}
        if not wanted <= columns:
            offered = sorted(int(name.split("_k")[1]) for name in columns
                             if name.startswith("factual_k"))
            raise UserError(f"pacl.k={params.k} but the cluster stage wrote no "
                            f"{sorted(wanted - columns)}",
                            hint=f"set pacl.k to one of {offered} or add {params.k} to the "
                                 "cluster stage's Ks")
        return ctx.input("ingest").shard_ids()

    def process(self, ctx: StageContext, state: None, shard_id: int) -> ShardOutput:
        params: PaclParams = ctx.params  # type: ignore[assignment]
        rows = ctx.input("ingest").read_shard(
            shard_id, ["sample_id", "source_id", "image_path", "split"]).to_pylist()
        factual, emotional = f"factual_k{params.k}", f"emotional_k{params.k}"
        partitions = _rows_by_id(ctx.input("partition"), shard_id, ["sample_id", "partition"])
        clusters = _rows_by_id(ctx.input("cluster"), shard_id, ["sample_id", factual, emotional])
        features = _finite_features(ctx.input("emotional"), shard_id)
        kept, rejected = [], []
        for row in rows:
            problem = _missing_input(row["sample_id"], partitions, clusters, features,
                                     factual, emotional)
            if problem is not None:
                rejected.append({**row, "reason": problem[0], "detail": problem[1]})
            else:
                kept.append(row)
        kept, broken = self._check_images(ctx, kept)
        rejected += broken
        main = pa.table({
            "sample_id": [row["sample_id"] for row in kept],
            "split": [row["split"] for row in kept],
            "partition": [partitions[row["sample_id"]]["partition"] for row in kept],
            "factual_cluster": pa.array([clusters[row["sample_id"]][factual] for row in kept],
                                        pa.int32()),
            "emotional_cluster": pa.array([clusters[row["sample_id"]][emotional] for row in kept],
                                          pa.int32()),
        }, schema=SCHEMA)
        return ShardOutput(rows_in=len(rows), tables={MAIN_TABLE: main},
                           rejects=make_rejects(rejected))

    def _check_images(self, ctx: StageContext, rows: list[dict[str, Any]]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Decode every training image once, so a broken file is a reject, not a crash later."""
        train = [row for row in rows if row["split"] == "train"]
        failed: dict[str, str] = {}
        for batch in prefetched_image_batches([row["image_path"] for row in train], 64, _decoded,
                                              ctx.settings.workers):
            failed.update({train[index]["sample_id"]: error for index, error in batch.failures})
        kept = [row for row in rows if row["sample_id"] not in failed]
        rejects = [{**row, "reason": "image_load_failed", "detail": failed[row["sample_id"]]}
                   for row in rows if row["sample_id"] in failed]
        return kept, rejects

    def finalize(self, ctx: StageContext) -> dict[str, Any]:
        """Train on the split == "train" rows, then write models, history and the loss curve."""
        params: PaclParams = ctx.params  # type: ignore[assignment]
        image_paths, training, counts = self._training_set(ctx)
        job = pacl_worker.write_job(ctx.work_dir / JOB_DIR, params.train_config(), image_paths,
                                    training, ctx.settings.workers, params.device,
                                    params.cpu_threads)
        final = pacl_worker.launch(job.folder, params.processes, nodes=params)
        initial = load_torch(job.checkpoints / INITIAL_FILE)
        text_encoder = {key: ctx.input("emotional").manifest["params"].get(key)
                        for key in TEXT_ENCODER_KEYS}
        pacl_outputs.write_models(ctx.output_dir, final, initial, {"text_encoder": text_encoder})
        pacl_outputs.write_history(ctx.output_dir, final["history"])
        pacl_outputs.draw_loss_curve(ctx.output_dir / LOSS_CURVE_FILE, final["history"],
                                     final["epoch_steps"])
        summary = pacl_outputs.training_summary(final["history"], final["epoch_steps"], counts,
                                                final["resumed_at_step"])
        return {**summary, "text_encoder": text_encoder, "model": final["config"]}

    def _training_set(self, ctx: StageContext) -> tuple[list[str], PaclTrainingSet, dict[str, int]]:
        """Image paths, text features and labels of the training rows, ordered by sample_id."""
        rows = StageArtifact(ctx.output_dir).read_all()
        rows = rows.filter(pc.equal(rows["split"], "train")).sort_by("sample_id")
        if rows.num_rows == 0:
            raise UserError("pacl has no training rows (split == 'train')",
                            hint="check the ingest split ratios and the pacl rejects")
        ids = rows["sample_id"].to_pylist()
        position = {sample_id: index for index, sample_id in enumerate(ids)}
        paths: list[str | None] = [None] * len(ids)
        for _, shard in ctx.input("ingest").iter_shards(["sample_id", "image_path"]):
            for sample_id, path in zip(shard["sample_id"].to_pylist(), shard["image_path"].to_pylist()):
                if sample_id in position:
                    paths[position[sample_id]] = path
        features: np.ndarray | None = None
        for _, shard in ctx.input("emotional").iter_shards(["sample_id", "text_feature"],
                                                           table=TEXT_FEATURES):
            vectors = column_vectors(shard["text_feature"])
            if features is None:
                features = np.zeros((len(ids), vectors.shape[1]), np.float32)
            for sample_id, vector in zip(shard["sample_id"].to_pylist(), vectors):
                if sample_id in position:
                    features[position[sample_id]] = vector
        if features is None:
            raise UserError("the emotional stage has no text_features table",
                            hint="rerun the emotional stage of this run")
        partition = [PARTITION_IDS[name] for name in rows["partition"].to_pylist()]
        training = PaclTrainingSet(torch.from_numpy(features), torch.tensor(partition),
                                   torch.tensor(rows["factual_cluster"].to_numpy()),
                                   torch.tensor(rows["emotional_cluster"].to_numpy()))
        counts = {part.key: int(sum(1 for value in partition if value == int(part)))
                  for part in ALL_PARTITIONS}
        if counts["strong"] == 0:
            raise UserError("no strong-partition training samples: the first third of PACL "
                            "trains L1 on them alone",
                            hint="lower the partition thresholds (factual_sigma/emotional_sigma) "
                                 "or add data")
        return [str(path) for path in paths], training, counts


def _finite_features(emotional: StageArtifact, shard_id: int) -> dict[str, bool]:
    """Whether each sample's text feature is finite, for the samples that have one."""
    if not emotional.shard_path(shard_id, TEXT_FEATURES).is_file():
        return {}
    table = emotional.read_shard(shard_id, ["sample_id", "text_feature"], table=TEXT_FEATURES)
    finite = np.isfinite(column_vectors(table["text_feature"])).all(axis=1)
    return dict(zip(table["sample_id"].to_pylist(), finite.tolist()))


def _missing_input(sample_id: str, partitions: dict[str, dict[str, Any]],
                   clusters: dict[str, dict[str, Any]], features: dict[str, bool],
                   factual: str, emotional: str) -> tuple[str, str] | None:
    """(reason, detail) when an upstream stage has no usable value for the sample."""
    partition = partitions.get(sample_id)
    if partition is None:
        return "no_partition", "rejected by or missing from the partition stage"
    if partition["partition"] not in PARTITION_IDS:
        return "unknown_partition", f"partition {partition['partition']!r}"
    cluster = clusters.get(sample_id)
    if cluster is None or cluster[factual] is None or cluster[emotional] is None:
        return "no_cluster", f"no {factual}/{emotional} in the cluster stage"
    finite = features.get(sample_id)
    if finite is None:
        return "no_text_feature", "no text feature in the emotional stage"
    if not finite:
        return "bad_text_feature", "text feature has NaN or infinite values"
    return None
