"""`factual`: CLIP image–text cosine per post (PACL stage 1, factual agreement).

The L2-normalised image and text embeddings are written as a side table (`embeddings`,
float16 fixed-size lists) so later stages (ANP detection, inspection) reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from affectflow.core.columns import vector_column
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.specs import models_fingerprint
from affectflow.stages.ingest.stage import IMAGE_PATH, TEXT, TEXT_RAW
from affectflow.stages.param_types import ClipModel, Device

if TYPE_CHECKING:
    from affectflow.models.clip import ClipBundle

FACTUAL_SCORE = "factual_score"
TEXT_TRUNCATED = "text_truncated"
EMBEDDINGS = "embeddings"
IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"


class FactualParams(StageParams):
    clip: ClipModel = Field("ViT-B-32:laion2b_s34b_b79k",
                      description="open_clip arch[:tag|:checkpoint] or a saved model folder")
    text_column: Literal["text", "text_raw"] = Field(
        TEXT, description="ingest's cleaned post text, or the raw post")
    batch_size: int = Field(64, ge=1)
    device: Device = None
    seed: int = Field(0, description="seeds random-init specs so runs are reproducible")


@dataclass
class FactualState:
    bundle: ClipBundle


class FactualStage(Stage[FactualParams]):
    name = "factual"
    uses_accelerator = True
    inputs = ("ingest",)
    reads = (TableRef("ingest", (SAMPLE_ID, SOURCE_ID, IMAGE_PATH, TEXT, TEXT_RAW)),)
    Params = FactualParams
    schema = pa.schema([(SAMPLE_ID, pa.string()), (FACTUAL_SCORE, pa.float32()),
                        (TEXT_TRUNCATED, pa.bool_())])
    side_schemas: ClassVar[dict[str, pa.Schema]] = {EMBEDDINGS: pa.schema([(SAMPLE_ID, pa.string()),
                                           (IMAGE_EMBEDDING, pa.list_(pa.float16())),
                                           (TEXT_EMBEDDING, pa.list_(pa.float16()))])}

    def source_fingerprint(self, params: FactualParams, settings: Any) -> str:
        return models_fingerprint(("clip", params.clip))

    def setup(self, ctx: StageContext[FactualParams]) -> FactualState:
        import torch

        from affectflow.models.clip import load_clip

        params = ctx.params
        torch.manual_seed(params.seed)
        return FactualState(load_clip(params.clip, device=params.device))

    def process(self, ctx: StageContext[FactualParams], state: FactualState,
                shard_id: int) -> ShardOutput:
        from affectflow.models.clip import encode_images, encode_texts
        from affectflow.stages.batching import prefetched_image_batches

        params = ctx.params
        rows = ctx.input("ingest").read_shard(
            shard_id, columns=[SAMPLE_ID, SOURCE_ID, IMAGE_PATH, params.text_column])
        ids = rows[SAMPLE_ID].to_pylist()
        texts = rows[params.text_column].to_pylist()
        image_vectors: dict[int, np.ndarray] = {}
        rejects = []
        for batch in prefetched_image_batches(rows[IMAGE_PATH].to_pylist(), params.batch_size,
                                              state.bundle.preprocess, ctx.settings.workers):
            for index, error in batch.failures:
                rejects.append({SAMPLE_ID: ids[index], SOURCE_ID: rows[SOURCE_ID][index].as_py(),
                                "reason": "image_load_failed", "detail": error})
            if batch.pixels is not None:
                encoded = encode_images(state.bundle, batch.pixels).numpy()
                image_vectors.update(zip(batch.indices, encoded))
        kept = sorted(image_vectors)
        text_emb, truncated = encode_texts(state.bundle, [texts[i] for i in kept], params.batch_size)
        images = (np.stack([image_vectors[i] for i in kept]) if kept
                  else np.zeros((0, text_emb.shape[1]), np.float32))
        text_vectors = text_emb.numpy()
        scores = (images * text_vectors).sum(axis=1).astype(np.float32)
        kept_ids = pa.array([ids[i] for i in kept], pa.string())
        main = pa.table({SAMPLE_ID: kept_ids, FACTUAL_SCORE: scores,
                         TEXT_TRUNCATED: truncated.numpy()})
        side = pa.table({SAMPLE_ID: kept_ids, IMAGE_EMBEDDING: vector_column(images),
                         TEXT_EMBEDDING: vector_column(text_vectors)})
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main, EMBEDDINGS: side},
                           rejects=make_rejects(rejects))

    def finalize(self, ctx: StageContext[FactualParams]) -> dict[str, Any]:
        table = StageArtifact(ctx.output_dir).read_all(columns=[FACTUAL_SCORE, TEXT_TRUNCATED])
        scores = table[FACTUAL_SCORE].to_numpy()
        return {"texts_truncated": int(np.asarray(table[TEXT_TRUNCATED]).sum()),
                "score_mean": float(scores.mean()) if len(scores) else None,
                "score_min": float(scores.min()) if len(scores) else None,
                "score_max": float(scores.max()) if len(scores) else None}
