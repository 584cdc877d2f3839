"""`emotional`: emotional agreement of image and post (PACL stage 1, emotional side).

D(v) = the image's top-k adjective–noun pairs, detected zero-shot with CLIP against an ANP
vocabulary (DeepSentiBank's Caffe detector cannot run here); B = a sentence encoder for tweets
(BERTweet in the paper). emotional_score = cosine(B(D(v) joined as text), B(post text)). B is the
scorer only: the frozen text tower that clustering and PACL use is the `teacher` stage's encoder.

PACL says the scorers "can be replaced with other off-the-shelf tools": `image_text` describes the
image by its ANPs (the paper), by its caption (the `caption` stage), or by both. With a ground
truth of planted emotional mismatches, `finalize` reports how well each of `compare_image_texts`
separates them (ROC AUC, side by side), from scores kept in the `image_text_scores` side table.

By default the image embeddings come from the `factual` stage when it used the same CLIP (the
image pass is the dominant cost); the stage then runs after `factual`. With
`reuse_factual_embeddings: false` it encodes images itself and can run concurrently with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from affectflow.core.columns import column_vectors, keyed_column
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_file
from affectflow.core.stage import ShardOutput, Stage, StageContext, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.specs import models_fingerprint
from affectflow.stages.factual import EMBEDDINGS, IMAGE_EMBEDDING
from affectflow.stages.ground_truth import match_truth
from affectflow.stages.ingest.stage import IMAGE_PATH, TEXT, TEXT_RAW
from affectflow.stages.knowledge.caption import CAPTION
from affectflow.stages.param_types import ClipModel, Device, GroundTruthCsv
from affectflow.stages.text_encoding import TextEncoderParams

if TYPE_CHECKING:
    from affectflow.models.anp import AnpScorer
    from affectflow.models.clip import ClipBundle
    from affectflow.models.text_encoder import TextEncoder

EMOTIONAL_SCORE = "emotional_score"
ANPS = "anps"
ANP_SCORES = "anp_scores"
ANP_TEXT = "anp_text"
IMAGE_TEXT = "image_text"
"""The text that described the image to the sentence encoder (ANPs, caption or both)."""
IMAGE_TEXT_SCORES = "image_text_scores"
"""Side table: the emotional score under each compared image text, long format."""
IMAGE_TEXT_KIND = "image_text_kind"
ImageText = Literal["anps", "caption", "anps+caption"]
ROC_FIGURE = "image_text_roc.png"


class EmotionalParams(TextEncoderParams):
    """The ANP detector (CLIP + vocabulary), B, the Eq. 2 text encoder (default BERTweet,
    `vinai/bertweet-base`, mean pooling over tokens), and what describes the image to B."""

    clip: ClipModel = Field("ViT-B-32:laion2b_s34b_b79k",
                            description="CLIP for zero-shot ANP detection")
    anp_vocabulary: Path | None = Field(None, description="adjective_noun per line; default MVSO English")
    anp_templates: list[str] = Field(default_factory=lambda: ["a photo of {}."], min_length=1)
    top_k: int = Field(3, ge=1, le=20)
    anp_score: Literal["cosine", "softmax"] = "cosine"
    text_column: Literal["text", "text_raw"] = Field(
        TEXT, description="ingest's cleaned post text, or the raw post")
    reuse_factual_embeddings: bool = True
    image_text: ImageText = Field("anps", description="what describes the image: its top-k ANPs "
                                  "(the paper), its caption, or the caption followed by the ANPs")
    compare_image_texts: list[ImageText] = Field(
        default_factory=list, description="image texts whose scores are compared on the planted "
                                          "emotional mismatches of ground_truth (ROC AUC)")
    ground_truth: GroundTruthCsv = None
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

    @model_validator(mode="after")
    def _comparison_has_truth(self) -> EmotionalParams:
        if self.compare_image_texts and self.ground_truth is None:
            raise ValueError("compare_image_texts needs ground_truth: the CSV of planted emotional "
                             "matches (the demo writes artifacts/demo-data/ground_truth.csv)")
        return self

    @property
    def scored_image_texts(self) -> list[ImageText]:
        """The configured image text first, then the other compared ones."""
        return list(dict.fromkeys([self.image_text, *self.compare_image_texts]))

    @property
    def reads_captions(self) -> bool:
        return any(kind != "anps" for kind in self.scored_image_texts)


def describe_image(kind: ImageText, anp_text: str, caption: str | None) -> str | None:
    """The image's text for the sentence encoder; None when `kind` needs a caption it lacks."""
    if kind == "anps":
        return anp_text
    if caption is None or not caption.strip():
        return None
    return caption.strip() if kind == "caption" else f"{caption.strip().rstrip('.')}. {anp_text}"


@dataclass
class EmotionalState:
    clip: ClipBundle
    anps: AnpScorer
    text_encoder: TextEncoder


class EmotionalStage(Stage[EmotionalParams]):
    name = "emotional"
    uses_accelerator = True
    inputs = ("ingest", "factual", "caption")
    reads = (TableRef("ingest", (SAMPLE_ID, SOURCE_ID, IMAGE_PATH, TEXT, TEXT_RAW)),
             TableRef("factual", (SAMPLE_ID, IMAGE_EMBEDDING), EMBEDDINGS),
             TableRef("caption", (SAMPLE_ID, CAPTION)))
    Params = EmotionalParams
    schema = pa.schema([(SAMPLE_ID, pa.string()), (EMOTIONAL_SCORE, pa.float32()),
                        (ANPS, pa.list_(pa.string())), (ANP_SCORES, pa.list_(pa.float32())),
                        (ANP_TEXT, pa.string()), (IMAGE_TEXT, pa.string())])
    side_schemas: ClassVar[dict[str, pa.Schema]] = {
        IMAGE_TEXT_SCORES: pa.schema([(SAMPLE_ID, pa.string()), (IMAGE_TEXT_KIND, pa.string()),
                                      (EMOTIONAL_SCORE, pa.float32())])}

    def input_names(self, params: EmotionalParams) -> tuple[str, ...]:
        return tuple(name for name, needed in zip(self.inputs, (
            True, params.reuse_factual_embeddings, params.reads_captions)) if needed)

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
        import torch

        from affectflow.models.anp import AnpScorer, load_anp_vocabulary
        from affectflow.models.clip import load_clip

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
        from affectflow.models.clip import encode_images
        from affectflow.stages.batching import prefetched_image_batches

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

    def _captions(self, ctx: StageContext[EmotionalParams], shard_id: int) -> dict[str, str]:
        """sample_id -> caption of this shard, when an image text needs captions."""
        if not ctx.params.reads_captions:
            return {}
        return keyed_column(ctx.input("caption").read_shard(shard_id, [SAMPLE_ID, CAPTION]), CAPTION)

    def process(self, ctx: StageContext[EmotionalParams], state: EmotionalState,
                shard_id: int) -> ShardOutput:
        import torch

        params = ctx.params
        rows = ctx.input("ingest").read_shard(
            shard_id, columns=[SAMPLE_ID, SOURCE_ID, IMAGE_PATH, params.text_column])
        found, missing = self._image_embeddings(ctx, state, shard_id, rows)
        ids = rows[SAMPLE_ID].to_pylist()
        texts = rows[params.text_column].to_pylist()
        captions = self._captions(ctx, shard_id)
        kept = []
        for i in sorted(found):
            if describe_image(params.image_text, "", captions.get(ids[i])) is not None:
                kept.append(i)
            elif captions.get(ids[i]) is None:
                missing.append((i, "no_caption", "the caption stage has no caption for this image"))
            else:
                missing.append((i, "empty_caption", "the captioner wrote no words for this image"))
        if kept:
            matches = state.anps.top_k(torch.from_numpy(np.stack([found[i] for i in kept])),
                                       k=params.top_k, score=params.anp_score)
            anp_lists = [list(texts_) for texts_ in matches.anp_texts]
            anp_scores = matches.scores.numpy().astype(np.float32)
        else:
            anp_lists, anp_scores = [], np.zeros((0, params.top_k), np.float32)
        anp_text = [", ".join(anps) for anps in anp_lists]
        post_features = state.text_encoder.encode([texts[i] for i in kept], params.batch_size).numpy()
        described = {kind: [describe_image(kind, anps, captions.get(ids[i]))
                            for anps, i in zip(anp_text, kept)]
                     for kind in params.scored_image_texts}
        scores = {kind: self._scores(state, image_texts, post_features, params.batch_size)
                  for kind, image_texts in described.items()}
        kept_ids = pa.array([ids[i] for i in kept], pa.string())
        main = pa.table({SAMPLE_ID: kept_ids, EMOTIONAL_SCORE: scores[params.image_text],
                         ANPS: pa.array(anp_lists, pa.list_(pa.string())),
                         ANP_SCORES: pa.array([list(s) for s in anp_scores], pa.list_(pa.float32())),
                         ANP_TEXT: pa.array(anp_text, pa.string()),
                         IMAGE_TEXT: pa.array(described[params.image_text], pa.string())})
        compared = [(ids[i], kind, score) for kind in (params.scored_image_texts
                                                       if params.compare_image_texts else [])
                    for i, score in zip(kept, scores[kind].tolist()) if not np.isnan(score)]
        comparison = pa.Table.from_pylist(
            [{SAMPLE_ID: sample_id, IMAGE_TEXT_KIND: kind, EMOTIONAL_SCORE: score}
             for sample_id, kind, score in compared], schema=self.side_schemas[IMAGE_TEXT_SCORES])
        rejects = make_rejects([{SAMPLE_ID: ids[i], SOURCE_ID: rows[SOURCE_ID][i].as_py(),
                                 "reason": reason, "detail": detail} for i, reason, detail in missing])
        return ShardOutput(rows_in=rows.num_rows, rejects=rejects, tables={
            MAIN_TABLE: main, IMAGE_TEXT_SCORES: comparison})

    @staticmethod
    def _scores(state: EmotionalState, image_texts: list[str | None], post_features: np.ndarray,
                batch_size: int) -> np.ndarray:
        """cos(B(image text), B(post)) per row; NaN where the row has no such image text. Each
        distinct text is encoded once (images share ANP triples and captions often)."""
        present = [j for j, text in enumerate(image_texts) if text is not None]
        distinct = list(dict.fromkeys(image_texts[j] for j in present))
        position = {text: index for index, text in enumerate(distinct)}
        features = state.text_encoder.encode(distinct, batch_size).numpy()
        rows = features[np.array([position[image_texts[j]] for j in present], dtype=np.int64)]
        scores = np.full(len(image_texts), np.nan, np.float32)
        scores[present] = (rows * post_features[present]).sum(axis=1)
        return scores

    def finalize(self, ctx: StageContext[EmotionalParams]) -> dict[str, Any]:
        artifact = StageArtifact(ctx.output_dir)
        table = artifact.read_all(columns=[SAMPLE_ID, EMOTIONAL_SCORE, ANPS])
        scores = table[EMOTIONAL_SCORE].to_numpy()
        flat = table[ANPS].combine_chunks().flatten().to_pandas()
        summary = {"score_mean": float(scores.mean()) if len(scores) else None,
                   "top_anps": flat.value_counts().head(10).to_dict(),
                   "image_text": ctx.params.image_text}
        if ctx.params.ground_truth is not None:
            summary.update(self._separation(ctx, artifact, table))
        return summary

    def _separation(self, ctx: StageContext[EmotionalParams], artifact: StageArtifact,
                    table: pa.Table) -> dict[str, Any]:
        """ROC AUC of each scored image text for the planted emotional matches (a matched post
        should score higher than a mismatched one), on the posts the ground truth labels."""
        from affectflow.stages.metrics import draw_roc_curves, roc_auc

        params = ctx.params
        assert params.ground_truth is not None
        posts = ctx.input("ingest").read_all(columns=[SAMPLE_ID, SOURCE_ID])
        source_of = dict(zip(posts[SAMPLE_ID].to_pylist(), posts[SOURCE_ID].to_pylist()))
        matched = {source: emotional for source, (_, emotional) in
                   match_truth(params.ground_truth).items()}
        scored = (artifact.read_all(table=IMAGE_TEXT_SCORES).to_pylist() if params.compare_image_texts
                  else [{SAMPLE_ID: sample_id, IMAGE_TEXT_KIND: params.image_text, EMOTIONAL_SCORE: score}
                        for sample_id, score in zip(table[SAMPLE_ID].to_pylist(),
                                                    table[EMOTIONAL_SCORE].to_pylist())])
        curves: dict[str, tuple[list[float], list[bool]]] = {kind: ([], []) for kind in
                                                             params.scored_image_texts}
        for row in scored:
            truth = matched.get(source_of.get(row[SAMPLE_ID]))
            if truth is not None:
                curves[row[IMAGE_TEXT_KIND]][0].append(row[EMOTIONAL_SCORE])
                curves[row[IMAGE_TEXT_KIND]][1].append(truth)
        auc = {kind: roc_auc(np.array(values), np.array(truth)) for kind, (values, truth) in curves.items()}
        drawable = [(kind, np.array(values), np.array(truth)) for kind, (values, truth) in curves.items()
                    if auc[kind] is not None]
        result: dict[str, Any] = {"emotional_match_auc": auc,
                                  "auc_samples": {kind: len(values) for kind, (values, _) in curves.items()}}
        if drawable:
            draw_roc_curves(ctx.output_dir / ROC_FIGURE, drawable,
                            title="planted emotional matches vs emotional score")
            result["figures"] = [ROC_FIGURE]
        shown = " | ".join(f"{kind} {value:.3f}" for kind, value in auc.items() if value is not None)
        result["headline"] = [f"planted emotional mismatches, ROC AUC of the emotional score by image "
                              f"text: {shown or 'no labelled posts'}"]
        return result
