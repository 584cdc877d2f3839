"""`emotional`: emotional agreement of image and post (PACL stage 1, emotional side).

D(v) = the image's top-k adjective–noun pairs, detected zero-shot with CLIP against an ANP
vocabulary (DeepSentiBank's Caffe detector cannot run here); B = a sentence encoder for tweets
(BERTweet in the paper). emotional_score = cosine(B(D(v) joined as text), B(post text)). B is the
scorer only: the frozen text tower that clustering and PACL use is the `teacher` stage's encoder.

By default the image embeddings come from the `factual` stage when it used the same CLIP (the
image pass is the dominant cost); the stage then runs after `factual`. With
`reuse_factual_embeddings: false` it encodes images itself and can run concurrently with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator

from affectflow.core.columns import column_vectors
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file
from affectflow.core.stage import ShardOutput, Stage, StageContext, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.anp import AnpScorer, load_anp_vocabulary
from affectflow.models.clip import ClipBundle, encode_images, load_clip
from affectflow.models.specs import models_fingerprint
from affectflow.models.text_encoder import TextEncoder
from affectflow.stages.batching import prefetched_image_batches
from affectflow.stages.factual import EMBEDDINGS, IMAGE_EMBEDDING
from affectflow.stages.ingest.stage import IMAGE_PATH, TEXT, TEXT_RAW
from affectflow.stages.param_types import ClipModel, Device
from affectflow.stages.text_encoding import TextEncoderParams

EMOTIONAL_SCORE = "emotional_score"
ANPS = "anps"
ANP_SCORES = "anp_scores"
ANP_TEXT = "anp_text"


class EmotionalParams(TextEncoderParams):
    """The ANP detector (CLIP + vocabulary) and B, the Eq. 2 text encoder (default BERTweet,
    `vinai/bertweet-base`, mean pooling over tokens)."""

    clip: ClipModel = Field("ViT-B-32:laion2b_s34b_b79k",
                            description="CLIP for zero-shot ANP detection")
    anp_vocabulary: Path | None = Field(None, description="adjective_noun per line; default MVSO English")
    anp_templates: list[str] = Field(default_factory=lambda: ["a photo of {}."], min_length=1)
    top_k: int = Field(3, ge=1, le=20)
    anp_score: Literal["cosine", "softmax"] = "cosine"
    text_column: Literal["text", "text_raw"] = Field(
        TEXT, description="ingest's cleaned post text, or the raw post")
    reuse_factual_embeddings: bool = True
    batch_size: int = Field(64, ge=1)
    device: Device = None
    seed: int = 0

    @field_validator("anp_vocabulary")
    @classmethod
    def _vocabulary_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value} (an adjective_noun-per-line file; omit the "
                             f"key for the packaged MVSO vocabulary)")
        return value


@dataclass
class EmotionalState:
    clip: ClipBundle
    anps: AnpScorer
    text_encoder: TextEncoder


class EmotionalStage(Stage[EmotionalParams]):
    name = "emotional"
    uses_accelerator = True
    inputs = ("ingest", "factual")
    reads = (TableRef("ingest", (SAMPLE_ID, SOURCE_ID, IMAGE_PATH, TEXT, TEXT_RAW)),
             TableRef("factual", (SAMPLE_ID, IMAGE_EMBEDDING), EMBEDDINGS))
    Params = EmotionalParams
    schema = pa.schema([(SAMPLE_ID, pa.string()), (EMOTIONAL_SCORE, pa.float32()),
                        (ANPS, pa.list_(pa.string())), (ANP_SCORES, pa.list_(pa.float32())),
                        (ANP_TEXT, pa.string())])

    def input_names(self, params: EmotionalParams) -> tuple[str, ...]:
        return self.inputs if params.reuse_factual_embeddings else ("ingest",)

    def check_config(self, params: EmotionalParams, sections: dict[str, Any]) -> None:
        factual = sections.get("factual")
        if params.reuse_factual_embeddings and factual is not None \
                and factual.clip != params.clip:
            raise ValueError(f"emotional.clip {params.clip!r} differs from factual.clip "
                             f"{factual.clip!r}, so the factual image embeddings cannot be reused; "
                             "use the same clip or set emotional.reuse_factual_embeddings: false")

    def source_fingerprint(self, params: EmotionalParams, settings: Any) -> str:
        vocabulary = str(params.anp_vocabulary) if params.anp_vocabulary else None
        return models_fingerprint(("clip", params.clip), ("transformers", params.text_encoder)) \
            + (f"|{hash_file(params.anp_vocabulary)}" if vocabulary else "")

    def prepare(self, ctx: StageContext[EmotionalParams]) -> list[int]:
        params = ctx.params
        if params.reuse_factual_embeddings:
            factual_clip = ctx.input("factual").manifest["params"]["clip"]
            if factual_clip != params.clip:
                raise UserError(f"emotional.clip {params.clip!r} differs from the clip "
                                f"{factual_clip!r} this run's factual stage used, so its image "
                                "embeddings cannot be reused",
                                hint="rerun factual with the same clip, or set "
                                     "emotional.reuse_factual_embeddings=false")
        return ctx.input("ingest").shard_ids()

    def setup(self, ctx: StageContext[EmotionalParams]) -> EmotionalState:
        params = ctx.params
        torch.manual_seed(params.seed)
        clip = load_clip(params.clip, device=params.device)
        cache_dir = Path(ctx.settings.artifact_root) / "cache" / "anp"
        anps = AnpScorer(clip, load_anp_vocabulary(params.anp_vocabulary), params.anp_templates,
                         cache_dir=cache_dir)
        return EmotionalState(clip, anps, params.load_encoder(params.device))

    def _image_embeddings(self, ctx: StageContext[EmotionalParams], state: EmotionalState,
                          shard_id: int, rows: pa.Table
                          ) -> tuple[dict[int, np.ndarray], list[tuple[int, str, str]]]:
        """Image embeddings by row index, and (index, reason, detail) for rows without one."""
        params = ctx.params
        index_of = {sid: i for i, sid in enumerate(rows[SAMPLE_ID].to_pylist())}
        if params.reuse_factual_embeddings:
            side = ctx.input("factual").read_shard(shard_id, [SAMPLE_ID, IMAGE_EMBEDDING],
                                                   table=EMBEDDINGS)
            vectors = column_vectors(side[IMAGE_EMBEDDING])
            found = {index_of[sid]: vectors[j] for j, sid in enumerate(side[SAMPLE_ID].to_pylist())}
            missing = [(i, "no_image_embedding", "rejected by the factual stage")
                       for i in range(rows.num_rows) if i not in found]
            return found, missing
        found, missing = {}, []
        for batch in prefetched_image_batches(rows[IMAGE_PATH].to_pylist(), params.batch_size,
                                              state.clip.preprocess, ctx.settings.workers):
            missing += [(i, "image_load_failed", error) for i, error in batch.failures]
            if batch.pixels is not None:
                found.update(zip(batch.indices, encode_images(state.clip, batch.pixels).numpy()))
        return found, missing

    def process(self, ctx: StageContext[EmotionalParams], state: EmotionalState,
                shard_id: int) -> ShardOutput:
        params = ctx.params
        rows = ctx.input("ingest").read_shard(
            shard_id, columns=[SAMPLE_ID, SOURCE_ID, IMAGE_PATH, params.text_column])
        found, missing = self._image_embeddings(ctx, state, shard_id, rows)
        kept = sorted(found)
        ids = rows[SAMPLE_ID].to_pylist()
        texts = rows[params.text_column].to_pylist()
        if kept:
            matches = state.anps.top_k(torch.from_numpy(np.stack([found[i] for i in kept])),
                                       k=params.top_k, score=params.anp_score)
            anp_lists = [list(texts_) for texts_ in matches.anp_texts]
            anp_scores = matches.scores.numpy().astype(np.float32)
            anp_text = [", ".join(anps) for anps in anp_lists]
            anp_features = state.text_encoder.encode(anp_text, params.batch_size).numpy()
            post_features = state.text_encoder.encode([texts[i] for i in kept],
                                                      params.batch_size).numpy()
            scores = (anp_features * post_features).sum(axis=1).astype(np.float32)
        else:
            anp_lists, anp_text = [], []
            anp_scores = np.zeros((0, params.top_k), np.float32)
            scores = np.zeros(0, np.float32)
        kept_ids = pa.array([ids[i] for i in kept], pa.string())
        main = pa.table({SAMPLE_ID: kept_ids, EMOTIONAL_SCORE: scores,
                         ANPS: pa.array(anp_lists, pa.list_(pa.string())),
                         ANP_SCORES: pa.array([list(s) for s in anp_scores], pa.list_(pa.float32())),
                         ANP_TEXT: pa.array(anp_text, pa.string())})
        rejects = make_rejects([{SAMPLE_ID: ids[i], SOURCE_ID: rows[SOURCE_ID][i].as_py(),
                                 "reason": reason, "detail": detail} for i, reason, detail in missing])
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main}, rejects=rejects)

    def finalize(self, ctx: StageContext[EmotionalParams]) -> dict[str, Any]:
        table = StageArtifact(ctx.output_dir).read_all(columns=[EMOTIONAL_SCORE, ANPS])
        scores = table[EMOTIONAL_SCORE].to_numpy()
        flat = table[ANPS].combine_chunks().flatten().to_pandas()
        return {"score_mean": float(scores.mean()) if len(scores) else None,
                "top_anps": flat.value_counts().head(10).to_dict()}
