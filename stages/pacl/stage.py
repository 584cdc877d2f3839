"""`pacl`: partitioned adaptive contrastive pretraining of a visual encoder (PACL stage 3).

Shards join, per sample, the partition, the factual/emotional cluster ids (column pair
`factual_k{k}` / `emotional_k{k}`) and the teacher's frozen text features, and decode every
training image into the pixel cache (the squares the epochs crop from), which is also the check
that it still loads and is the file ingest validated; a sample missing any of them becomes a
reject with a reason. Training
needs every shard, so it runs in `finalize`: the training set is written as a job folder in
the stage's private work area and trained in this process or under torchrun. Checkpoints live
there too, so rerunning an interrupted stage (same fingerprint) resumes where it stopped.

Outputs: `model.pt` (both towers), `initial_model.pt` (the same architecture before any step:
the "before PACL" encoder), `backbone.pt` (the visual tower alone), the `history` table (one
row per optimiser step), `loss_curve.png`, and the summary in the manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from affectflow.core.columns import column_vectors
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_value
from affectflow.core.stage import ShardOutput, Stage, StageContext, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.pacl.losses import ALL_PARTITIONS
from affectflow.models.specs import weights_fingerprint
from affectflow.stages.cluster.stage import label_column
from affectflow.stages.ingest.stage import IMAGE_PATH, IMAGE_SHA256, SPLIT, TRAIN
from affectflow.stages.pacl import outputs
from affectflow.stages.pacl.outputs import HISTORY, HISTORY_SCHEMA, LOSS_CURVE_FILE
from affectflow.stages.pacl.params import PaclParams
from affectflow.stages.partition.stage import PARTITION
from affectflow.stages.teacher import TEXT_FEATURE, TEXT_FEATURES, TeacherParams

if TYPE_CHECKING:

    from affectflow.core.pixels import PixelTransform
    from affectflow.models.pacl.train import PaclTrainingSet

PARTITION_IDS = {part.key: int(part) for part in ALL_PARTITIONS}
JOB_DIR = "training"
FACTUAL_CLUSTER = "factual_cluster"
EMOTIONAL_CLUSTER = "emotional_cluster"
_INGEST_COLUMNS = [SAMPLE_ID, SOURCE_ID, IMAGE_PATH, IMAGE_SHA256, SPLIT]

SCHEMA = pa.schema([
    (SAMPLE_ID, pa.string()),
    (SPLIT, pa.string()),
    (PARTITION, pa.string()),
    (FACTUAL_CLUSTER, pa.int32()),
    (EMOTIONAL_CLUSTER, pa.int32()),
])


def training_pixels(params: PaclParams, settings: Any) -> PixelTransform:
    """The cached squares PACL's epochs crop from: `load_size` of the configured image size, or
    of the encoder's own input size (the encoder is built once to read it)."""
    from affectflow.models.encoder_runtime import resolve_device
    from affectflow.models.pacl.augment import square_pixels
    from affectflow.models.pacl.model import PretrainedWeightsError, build_visual_encoder
    from affectflow.stages.batching import jpeg_decoder

    image_size = params.image_size
    if image_size is None:
        try:
            image_size = build_visual_encoder(params.visual_encoder, params.pretrained).image_size[0]
        except (PretrainedWeightsError, FileNotFoundError, ValueError) as error:
            raise UserError(f"pacl.visual_encoder {params.visual_encoder!r} cannot be loaded: "
                            f"{error}", hint="name local weights in the spec, or set "
                                             "pacl.pretrained=false for a random-init encoder") from error
    return square_pixels(image_size, jpeg_decoder(settings, resolve_device(params.device)))


def _rows_by_id(artifact: StageArtifact, shard_id: int, columns: list[str],
                table: str = MAIN_TABLE) -> dict[str, dict[str, Any]]:
    """One input shard keyed by sample_id (empty when the input has no such shard)."""
    if not artifact.shard_path(shard_id, table).is_file():
        return {}
    rows = artifact.read_shard(shard_id, columns, table=table)
    return {row[SAMPLE_ID]: row for row in rows.to_pylist()}


class PaclStage(Stage[PaclParams]):
    name = "pacl"
    inputs = ("ingest", "teacher", "partition", "cluster")
    reads = (TableRef("ingest", tuple(_INGEST_COLUMNS)),
             TableRef("teacher", (SAMPLE_ID, TEXT_FEATURE), TEXT_FEATURES),
             TableRef("partition", (SAMPLE_ID, PARTITION)))
    Params = PaclParams
    schema = SCHEMA
    side_schemas: ClassVar[dict[str, pa.Schema]] = {HISTORY: HISTORY_SCHEMA}

    def check_config(self, params: PaclParams, sections: dict[str, Any]) -> None:
        cluster = sections.get("cluster")
        if cluster is not None and params.k not in cluster.ks:
            raise ValueError(f"pacl.k is {params.k} but cluster.ks is {cluster.ks}: PACL reads "
                             f"the pseudo-labels of one clustered K; set pacl.k to one of "
                             f"{cluster.ks} or add {params.k} to cluster.ks")

    def source_fingerprint(self, params: PaclParams, settings: Any) -> str:
        """The local weights behind the visual encoder spec, if any: rewriting them retrains."""
        return hash_value([params.visual_encoder,
                           weights_fingerprint("visual", params.visual_encoder)])

    def prepare(self, ctx: StageContext[PaclParams]) -> list[int]:
        params = ctx.params
        ks = ctx.input("cluster").manifest["params"]["ks"]
        if params.k not in ks:
            raise UserError(f"pacl.k={params.k} but this run's cluster stage clustered K in {ks}",
                            hint=f"set pacl.k to one of {ks} or add {params.k} to cluster.ks")
        return ctx.input("ingest").shard_ids()

    def setup(self, ctx: StageContext[PaclParams]) -> PixelTransform:
        return training_pixels(ctx.params, ctx.settings)

    def process(self, ctx: StageContext[PaclParams], state: PixelTransform,
                shard_id: int) -> ShardOutput:
        params = ctx.params
        rows = ctx.input("ingest").read_shard(shard_id, _INGEST_COLUMNS).to_pylist()
        factual, emotional = label_column("factual", params.k), label_column("emotional", params.k)
        partitions = _rows_by_id(ctx.input("partition"), shard_id, [SAMPLE_ID, PARTITION])
        clusters = _rows_by_id(ctx.input("cluster"), shard_id, [SAMPLE_ID, factual, emotional])
        features = _finite_features(ctx.input("teacher"), shard_id)
        kept, rejected = [], []
        for row in rows:
            problem = _missing_input(row[SAMPLE_ID], partitions, clusters, features,
                                     factual, emotional)
            if problem is not None:
                rejected.append({**row, "reason": problem[0], "detail": problem[1]})
            else:
                kept.append(row)
        kept, broken = self._cache_images(ctx, state, kept)
        rejected += broken
        main = pa.table({
            SAMPLE_ID: [row[SAMPLE_ID] for row in kept],
            SPLIT: [row[SPLIT] for row in kept],
            PARTITION: [partitions[row[SAMPLE_ID]][PARTITION] for row in kept],
            FACTUAL_CLUSTER: pa.array([clusters[row[SAMPLE_ID]][factual] for row in kept],
                                      pa.int32()),
            EMOTIONAL_CLUSTER: pa.array([clusters[row[SAMPLE_ID]][emotional] for row in kept],
                                        pa.int32()),
        }, schema=SCHEMA)
        return ShardOutput(rows_in=len(rows), tables={MAIN_TABLE: main},
                           rejects=make_rejects(rejected))

    def _cache_images(self, ctx: StageContext[PaclParams], pixels: PixelTransform,
                      rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Decode every training image into the pixel cache once (decoding is the check), so a
        broken or changed file is a reject, not a crash later."""
        from affectflow.core.loading import PixelRequest, failure_reason, fill_cache
        from affectflow.models.encoder_runtime import resolve_device
        from affectflow.stages.batching import pixel_cache

        train = [row for row in rows if row[SPLIT] == TRAIN]
        device = resolve_device(ctx.params.device)
        failures = fill_cache([PixelRequest(row[IMAGE_PATH], row[IMAGE_SHA256]) for row in train],
                              pixel_cache(ctx.settings).store(pixels), ctx.settings.workers,
                              decode_device=device if pixels.decoder == "torchvision" else None)
        failed = {train[index][SAMPLE_ID]: error for index, error in failures.items()}
        kept = [row for row in rows if row[SAMPLE_ID] not in failed]
        rejects = [{**row, "reason": failure_reason(failed[row[SAMPLE_ID]]),
                    "detail": failed[row[SAMPLE_ID]]} for row in rows if row[SAMPLE_ID] in failed]
        return kept, rejects

    def finalize(self, ctx: StageContext[PaclParams]) -> dict[str, Any]:
        """Train on the split == "train" rows, then write models, history and the loss curve."""
        from affectflow.models.checkpoints import load_torch
        from affectflow.models.encoder_runtime import resolve_device
        from affectflow.models.pacl.checkpoint import INITIAL_FILE
        from affectflow.models.step_speed import StepSpeed
        from affectflow.stages.batching import loader_settings
        from affectflow.stages.pacl import worker

        params = ctx.params
        images, training, counts = self._training_set(ctx)
        job = worker.write_job(ctx.work_dir / JOB_DIR, params.train_config(), images, training,
                               loader_settings(ctx.settings, resolve_device(params.device)),
                               params.device, params.cpu_threads,
                               StepSpeed(compile=ctx.settings.torch_compile))
        final = worker.launch(job.folder, params.processes, nodes=params)
        initial = load_torch(job.checkpoints / INITIAL_FILE)
        teacher = TeacherParams.model_construct(**ctx.input("teacher").manifest["params"])
        text_encoder = teacher.encoder_settings()
        outputs.write_models(ctx.output_dir, final, initial, {"text_encoder": text_encoder})
        outputs.write_history(ctx.output_dir, final["history"])
        outputs.draw_loss_curve(ctx.output_dir / LOSS_CURVE_FILE, final["history"],
                                final["epoch_steps"])
        summary = outputs.training_summary(final["history"], final["epoch_steps"], counts,
                                           final["resumed_at_step"])
        train_config = params.train_config()
        return {**summary, "text_encoder": text_encoder, "model": final["config"],
                "backbone_lr": train_config.backbone_lr, "head_lr": train_config.head_lr,
                "loss_weights": dict(zip([part.key for part in ALL_PARTITIONS], train_config.loss_weights)),
                "candidates": train_config.candidates}

    def _training_set(self, ctx: StageContext[PaclParams]
                      ) -> tuple[list[tuple[str, str]], PaclTrainingSet, dict[str, int]]:
        """(image path, sha256), text features and labels of the training rows, ordered by
        sample_id."""
        import torch

        from affectflow.models.pacl.train import PaclTrainingSet

        rows = StageArtifact(ctx.output_dir).read_all()
        rows = rows.filter(pc.equal(rows[SPLIT], TRAIN)).sort_by(SAMPLE_ID)
        if rows.num_rows == 0:
            raise UserError("pacl has no training rows (split == 'train')",
                            hint="check the ingest split ratios and the pacl rejects")
        ids = rows[SAMPLE_ID].to_pylist()
        position = {sample_id: index for index, sample_id in enumerate(ids)}
        images: list[tuple[str, str] | None] = [None] * len(ids)
        for _, shard in ctx.input("ingest").iter_shards([SAMPLE_ID, IMAGE_PATH, IMAGE_SHA256]):
            for sample_id, path, sha in zip(shard[SAMPLE_ID].to_pylist(), shard[IMAGE_PATH].to_pylist(),
                                            shard[IMAGE_SHA256].to_pylist()):
                if sample_id in position:
                    images[position[sample_id]] = (str(path), str(sha))
        features: np.ndarray | None = None
        for _, shard in ctx.input("teacher").iter_shards([SAMPLE_ID, TEXT_FEATURE],
                                                           table=TEXT_FEATURES):
            vectors = column_vectors(shard[TEXT_FEATURE])
            if features is None:
                features = np.zeros((len(ids), vectors.shape[1]), np.float32)
            for sample_id, vector in zip(shard[SAMPLE_ID].to_pylist(), vectors):
                if sample_id in position:
                    features[position[sample_id]] = vector
        if features is None:
            raise UserError("the teacher stage has no text_features table",
                            hint="rerun the teacher stage of this run")
        partition = [PARTITION_IDS[name] for name in rows[PARTITION].to_pylist()]
        training = PaclTrainingSet(torch.from_numpy(features), torch.tensor(partition),
                                   torch.tensor(rows[FACTUAL_CLUSTER].to_numpy()),
                                   torch.tensor(rows[EMOTIONAL_CLUSTER].to_numpy()))
        counts = {part.key: int(sum(1 for value in partition if value == int(part)))
                  for part in ALL_PARTITIONS}
        if counts["strong"] == 0:
            raise UserError("no strong-partition training samples: the first third of PACL "
                            "trains L1 on them alone",
                            hint="lower the partition thresholds (factual_sigma/emotional_sigma) "
                                 "or add data")
        lost = [ids[index] for index, image in enumerate(images) if image is None]
        if lost:
            raise UserError(f"pacl rows {lost[:3]} have no image in this run's ingest stage",
                            hint="rerun pacl with --force after ingest")
        return [image for image in images if image is not None], training, counts


def _finite_features(teacher: StageArtifact, shard_id: int) -> dict[str, bool]:
    """Whether each sample's text feature is finite, for the samples that have one."""
    if not teacher.shard_path(shard_id, TEXT_FEATURES).is_file():
        return {}
    table = teacher.read_shard(shard_id, [SAMPLE_ID, TEXT_FEATURE], table=TEXT_FEATURES)
    finite = np.isfinite(column_vectors(table[TEXT_FEATURE])).all(axis=1)
    return dict(zip(table[SAMPLE_ID].to_pylist(), finite.tolist()))


def _missing_input(sample_id: str, partitions: dict[str, dict[str, Any]],
                   clusters: dict[str, dict[str, Any]], features: dict[str, bool],
                   factual: str, emotional: str) -> tuple[str, str] | None:
    """(reason, detail) when an upstream stage has no usable value for the sample."""
    partition = partitions.get(sample_id)
    if partition is None:
        return "no_partition", "rejected by or missing from the partition stage"
    if partition[PARTITION] not in PARTITION_IDS:
        return "unknown_partition", f"partition {partition[PARTITION]!r}"
    cluster = clusters.get(sample_id)
    if cluster is None or cluster[factual] is None or cluster[emotional] is None:
        return "no_cluster", f"no {factual}/{emotional} in the cluster stage"
    finite = features.get(sample_id)
    if finite is None:
        return "no_text_feature", "no text feature in the teacher stage"
    if not finite:
        return "bad_text_feature", "text feature has NaN or infinite values"
    return None
