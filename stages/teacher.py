"""`teacher`: the frozen text tower's features of every post (PACL stages 2 and 3).

PACL clusters the post texts for the emotional pseudo-labels (stage 2) and trains the visual
encoder against a frozen, sentiment-aware text encoder (stage 3): SKEP roberta-large in the paper,
whose public code takes the first token's last hidden state (CLS). That is a different encoder
from the Eq. 2 scorer B (BERTweet, `emotional.text_encoder`), so it has its own stage: `cluster`
and `pacl` read its `text_features` side table, and `pacl` records its settings with the model,
so the probe's zero-shot prompts are encoded by the encoder the model was trained against.

A stage of its own (not a cache inside `cluster`) because two stages read the features, its
fingerprint does not depend on K or the visual encoder (a K sweep or a new backbone never
re-encodes 186k posts through roberta-large), and its rows and rejects are accounted for and
inspectable like every other stage's.

Main table: `tokens` (each text's length in tokens before truncation) and `truncated` (more
tokens than `max_length`: the features saw only the first `max_length`). Rejects: `missing_text`
(no text or only whitespace: image-only sources such as a labelled image folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from affectflow.core.columns import vector_column
from affectflow.core.stage import ShardOutput, Stage, StageContext, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.specs import models_fingerprint
from affectflow.stages.ingest.stage import TEXT, TEXT_RAW
from affectflow.stages.param_types import Device, TransformersModel
from affectflow.stages.text_encoding import TextEncoderParams

if TYPE_CHECKING:
    from affectflow.models.text_encoder import TextEncoder

TEXT_FEATURES = "text_features"
TEXT_FEATURE = "text_feature"
TOKENS = "tokens"
TRUNCATED = "truncated"

SKEP_ROBERTA_LARGE = "Yaxin/roberta-large-ernie2-skep-en"
"""SKEP roberta-large (English), converted to PyTorch from Baidu's PaddlePaddle release; the
public PACL code loads this model (its `roberta-large-ernie2-skep-en` folder) as the teacher."""


class TeacherParams(TextEncoderParams):
    """The frozen text tower PACL trains against and clusters texts with (default: SKEP
    roberta-large with CLS pooling, as the paper and its public code)."""

    text_encoder: TransformersModel = Field(SKEP_ROBERTA_LARGE,
                                            description="hub id, local folder or packaged:<name>")
    pooling: Literal["mean", "cls"] = Field("cls", description="cls: the first token's last "
                                            "hidden state (SKEP, public code); mean: over tokens")
    text_column: Literal["text", "text_raw"] = Field(
        TEXT, description="ingest's cleaned post text (the public code cleaned texts), or the raw post")
    batch_size: int = Field(64, ge=1)
    device: Device = None


class TeacherStage(Stage[TeacherParams]):
    name = "teacher"
    uses_accelerator = True
    inputs = ("ingest",)
    reads = (TableRef("ingest", (SAMPLE_ID, SOURCE_ID, TEXT, TEXT_RAW)),)
    Params = TeacherParams
    schema = pa.schema([(SAMPLE_ID, pa.string()), (TOKENS, pa.int32()), (TRUNCATED, pa.bool_())])
    side_schemas: ClassVar[dict[str, pa.Schema]] = {
        TEXT_FEATURES: pa.schema([(SAMPLE_ID, pa.string()), (TEXT_FEATURE, pa.list_(pa.float16()))])}

    def source_fingerprint(self, params: TeacherParams, settings: Any) -> str:
        return models_fingerprint(("transformers", params.text_encoder))

    def prepare(self, ctx: StageContext[TeacherParams]) -> list[int]:
        return ctx.input("ingest").shard_ids()

    def setup(self, ctx: StageContext[TeacherParams]) -> TextEncoder:
        return ctx.params.load_encoder(ctx.params.device)

    def process(self, ctx: StageContext[TeacherParams], state: TextEncoder,
                shard_id: int) -> ShardOutput:
        params = ctx.params
        rows = ctx.input("ingest").read_shard(shard_id, [SAMPLE_ID, SOURCE_ID, params.text_column])
        ids, texts = rows[SAMPLE_ID].to_pylist(), rows[params.text_column].to_pylist()
        kept = [i for i, text in enumerate(texts) if text is not None and text.strip()]
        kept_texts = [texts[i] for i in kept]
        features = (state.encode(kept_texts, params.batch_size).numpy() if kept
                    else np.zeros((0, state.dim), np.float32))
        tokens = state.token_counts(kept_texts)
        kept_ids = pa.array([ids[i] for i in kept], pa.string())
        main = pa.table({SAMPLE_ID: kept_ids, TOKENS: pa.array(tokens, pa.int32()),
                         TRUNCATED: pa.array([count > state.max_length for count in tokens],
                                             pa.bool_())}, schema=self.schema)
        side = pa.table({SAMPLE_ID: kept_ids, TEXT_FEATURE: vector_column(features)})
        kept_set = set(kept)
        rejects = make_rejects([{SAMPLE_ID: ids[i], SOURCE_ID: rows[SOURCE_ID][i].as_py(),
                                 "reason": "missing_text",
                                 "detail": f"ingest's {params.text_column} is empty"}
                                for i in range(len(ids)) if i not in kept_set])
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main, TEXT_FEATURES: side},
                           rejects=rejects)

    def finalize(self, ctx: StageContext[TeacherParams]) -> dict[str, Any]:
        table = StageArtifact(ctx.output_dir).read_all(columns=[TOKENS, TRUNCATED])
        tokens = table[TOKENS].to_numpy()
        return {"encoder": ctx.params.encoder_settings(), "texts": table.num_rows,
                "truncated": int(pc.sum(table[TRUNCATED]).as_py() or 0),
                "tokens_median": float(np.median(tokens)) if len(tokens) else None,
                "tokens_p99": float(np.percentile(tokens, 99)) if len(tokens) else None}
