"""`factual`: CLIP image–text cosine per post (PACL stage 1, factual agreement).

The L2-normalised image and text embeddings are written as a side table (`embeddings`,
float16 fixed-size lists) so later stages (ANP detection, inspection) reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams
from affectflow.core.store import MAIN_TABLE, make_rejects
from affectflow.models.clip import ClipBundle, encode_images, encode_texts, load_clip
from affectflow.stages.batching import prefetched_image_batches
from affectflow.stages.model_specs import check_model_spec, model_fingerprint
from affectflow.stages.param_types import Device
from pydantic import Field, field_validator

EMBEDDINGS = "embeddings"


def vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) array -> float16 fixed-size-list column (half the bytes; cosines survive)."""
    flat = pa.array(vectors.astype(np.float16).reshape(-1), type=pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def column_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Inverse of `vector_column`, as float32 (n, d)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)


class FactualParams(StageParams):
    clip: str = Field("ViT-B-32:laion2b_s34b_b79k",
                      description="open_clip arch[:tag|:checkpoint] or a saved model folder")
    text_column: str = Field("text", pattern="^(text|text_raw)$")
    batch_size: int = Field(64, ge=1)
    device: Device = None
    seed: int = Field(0, description="seeds random-init specs so runs are reproducible")

    @field_validator("clip")
    @classmethod
    def _local_model_exists(cls, value: str) -> str:
        return check_model_spec(value)


@dataclass
class FactualState:
    bundle: ClipBundle


class FactualStage(Stage):
    name = "factual"
    uses_accelerator = True
    inputs = ("ingest",)
    Params = FactualParams
    schema = pa.schema([("sample_id", pa.string()), ("factual_score", pa.float32()),
                        ("text_truncated", pa.bool_())])
    side_schemas = {EMBEDDINGS: pa.schema([("sample_id", pa.string()),
                                           ("image_embedding", pa.list_(pa.float16())),
                                           ("text_embedding", pa.list_(pa.float16()))])}

    def source_fingerprint(self, params: FactualParams, settings: Any) -> str:  # type: ignore[override]
        return model_fingerprint(params.clip)

    def setup(self, ctx: StageContext) -> FactualState:
        params: FactualParams = ctx.params  # type: ignore[assignment]
        torch.manual_seed(params.seed)
        return FactualState(load_clip(params.clip, device=params.device))

    def process(self, ctx: StageContext, state: FactualState, shard_id: int) -> ShardOutput:
        params: FactualParams = ctx.params  # type: ignore[assignment]
        rows = ctx.input("ingest").read_shard(
            shard_id, columns=["sample_id", "source_id", "image_path", params.text_column])
        ids = rows["sample_id"].to_pylist()
        texts = rows[params.text_column].to_pylist()
        image_vectors: dict[int, np.ndarray] = {}
        rejects = []
        for batch in prefetched_image_batches(rows["image_path"].to_pylist(), params.batch_size,
                                              state.bundle.preprocess, ctx.settings.workers):
            for index, error in batch.failures:
                rejects.append({"sample_id": ids[index], "source_id": rows["source_id"][index].as_py(),
                                "reason": "image_load_failed", "detail": error})
            if batch.pixels is not None:
                encoded = encode_images(state.bundle, batch.pixels).numpy()
                image_vectors.update(zip(batch.indices, encoded))
        kept = sorted(image_vectors)
        text_emb, truncated = encode_texts(state.bundle, [texts[i] for i in kept], params.batch_size)
        images = np.stack([image_vectors[i] for i in kept]) if kept else np.zeros((0, text_emb.shape[1]), np.float32)
        text_vectors = text_emb.numpy()
        scores = (images * text_vectors).sum(axis=1).astype(np.float32)
        kept_ids = pa.array([ids[i] for i in kept], pa.string())
        main = pa.table({"sample_id": kept_ids, "factual_score": scores,
                         "text_truncated": truncated.numpy()})
        side = pa.table({"sample_id": kept_ids, "image_embedding": vector_column(images),
                         "text_embedding": vector_column(text_vectors)})
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main, EMBEDDINGS: side},
                           rejects=make_rejects(rejects))

    def finalize(self, ctx: StageContext) -> dict[str, Any]:
        from affectflow.core.store import StageArtifact

        table = StageArtifact(ctx.output_dir).read_all(columns=["factual_score", "text_truncated"])
        scores = table["factual_score"].to_numpy()
        return {"texts_truncated": int(np.asarray(table["text_truncated"]).sum()),
                "score_mean": float(scores.mean()) if len(scores) else None,
                "score_min": float(scores.min()) if len(scores) else None,
                "score_max": float(scores.max()) if len(scores) else None}
