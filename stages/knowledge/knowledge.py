"""`knowledge`: KCDP's knowledge representation k per post image, and zero-shot emotion labels.

k = concat(T(caption), Σ T(triplet)) with T the CLIP text encoder (`models/knowledge.py`), written
as the float16 side table `knowledge` keyed by sample_id: pooled (2 x embed_dim values, the
paper's vector) or token-level (2 x context length x width, the public code's 154 x 768 for CLIP
ViT-L/14). A sample without triplets has its caption in both halves. The main table holds the
CLIEA-style zero-shot label read from k ("A {emotion} photo of" prompts, cosine, argmax) and its
probability; `finalize` scores the labels against the posts' own labels and, when given, the
planted image emotions of a ground-truth file.

An empty caption describes nothing, so it is rejected (`empty_caption`) rather than turned into
the embedding of an empty string; a triplets row whose caption row is missing is rejected too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from affectflow.core.columns import keyed_column, vector_column
from affectflow.core.errors import UserError
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.knowledge import (
    CLIEA_PROMPT,
    CLIEA_TEMPERATURE,
    knowledge_representation,
    label_probabilities,
    label_scores,
)
from affectflow.models.specs import models_fingerprint
from affectflow.models.triplets import Triplet
from affectflow.stages.ground_truth import EMOTION_COLUMNS, read_ground_truth
from affectflow.stages.ingest.stage import LABEL
from affectflow.stages.knowledge.caption import CAPTION
from affectflow.stages.knowledge.triplets import TRIPLETS
from affectflow.stages.param_types import ClipModel, Device, GroundTruthCsv

if TYPE_CHECKING:
    import torch

    from affectflow.models.clip import ClipBundle

KNOWLEDGE = "knowledge"
"""The side table, and its column: k per sample (float16; a matrix per row when token-level)."""
KNOWLEDGE_LABEL = "knowledge_label"
KNOWLEDGE_LABEL_PROBABILITY = "knowledge_label_probability"
KNOWLEDGE_TRIPLETS = "knowledge_triplets"
"""How many triplet embeddings k's second half sums; 0: the caption stands in for them."""
KNOWLEDGE_TRUNCATED = "knowledge_truncated"
"""The caption or one of its triplets was longer than the CLIP context and was cut."""
SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), (KNOWLEDGE_LABEL, pa.string()),
                    (KNOWLEDGE_LABEL_PROBABILITY, pa.float32()), (KNOWLEDGE_TRIPLETS, pa.int32()),
                    (KNOWLEDGE_TRUNCATED, pa.bool_())])
CONFUSION_FIGURE = "knowledge_labels_confusion.png"
NO_LABEL = "<none>"


class KnowledgeParams(StageParams):
    """The CLIP text encoder, the form of k, and the emotions the zero-shot labels choose from."""

    clip: ClipModel = Field("ViT-L-14:openai", description="open_clip arch[:tag|:checkpoint] or a "
                            "saved model folder; KCDP used CLIP ViT-L/14")
    representation: Literal["pooled", "tokens"] = Field(
        "pooled", description="pooled: the paper's embedding vectors; tokens: the public code's "
                              "token-level text features")
    labels: list[str] | None = Field(None, min_length=2, description="emotions to label with; "
                                     "default: the labels of the ingested posts")
    label_words: dict[str, str] = Field(default_factory=dict, description="the word a label puts "
                                        "in the prompt (default: the label in lower case)")
    prompt: str = Field(CLIEA_PROMPT, description="emotion prompt with one {emotion} field")
    temperature: float = Field(CLIEA_TEMPERATURE, gt=0, description="softmax temperature of the "
                               "label probabilities")
    ground_truth: GroundTruthCsv = None
    batch_size: int = Field(64, ge=1)
    device: Device = None
    seed: int = Field(0, description="seeds random-init specs so runs are reproducible")

    @field_validator("prompt")
    @classmethod
    def _one_emotion_field(cls, value: str) -> str:
        if value.count("{emotion}") != 1 or value.replace("{emotion}", "").count("{") \
                or value.count("}") != 1:
            raise ValueError(f"prompt {value!r} must hold the field {{emotion}} exactly once and no "
                             f"other braces, e.g. {CLIEA_PROMPT!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(set(value)) != len(value) or not all(v.strip() for v in value)):
            raise ValueError(f"labels {value} must be distinct, non-blank names")
        return value

    @model_validator(mode="after")
    def _words_name_labels(self) -> KnowledgeParams:
        if self.labels is not None:
            check_label_words(self.label_words, self.labels)
        return self

    def prompts(self, labels: list[str]) -> list[str]:
        return [self.prompt.format(emotion=self.label_words.get(label, label.lower()))
                for label in labels]


def check_label_words(words: dict[str, str], labels: list[str]) -> None:
    unknown = sorted(set(words) - set(labels))
    if unknown:
        raise ValueError(f"label_words names {unknown}, which are not among the labels {labels}; "
                         "give a prompt word only for a label the stage labels with")
    blank = sorted(label for label, word in words.items() if not word.strip())
    if blank:
        raise ValueError(f"label_words gives {blank} a blank prompt word")


@dataclass
class KnowledgeState:
    clip: ClipBundle
    labels: list[str]
    prompt_features: torch.Tensor


def triplet_text(triplet: dict[str, str]) -> str:
    """A triplet as CLIP reads it, 'subject verb object' (the public code joins the three parts
    without spaces, a bug)."""
    return " ".join(Triplet(**triplet))


class KnowledgeStage(Stage[KnowledgeParams]):
    name = "knowledge"
    uses_accelerator = True
    inputs = ("triplets", "caption", "ingest")
    reads = (TableRef("triplets", (SAMPLE_ID, TRIPLETS)), TableRef("caption", (SAMPLE_ID, CAPTION)),
             TableRef("ingest", (SAMPLE_ID, SOURCE_ID, LABEL)))
    Params = KnowledgeParams
    schema = SCHEMA
    side_schemas: ClassVar[dict[str, pa.Schema]] = {
        KNOWLEDGE: pa.schema([(SAMPLE_ID, pa.string()), (KNOWLEDGE, pa.list_(pa.float16()))])}

    def source_fingerprint(self, params: KnowledgeParams, settings: Any) -> str:
        return models_fingerprint(("clip", params.clip))

    def labels(self, ctx: StageContext[KnowledgeParams]) -> list[str]:
        """The configured labels, else those of the ingested posts (sorted)."""
        params = ctx.params
        if params.labels is not None:
            return list(params.labels)
        found = sorted(label for label in ctx.input("ingest").manifest["summary"].get("labels", {})
                       if label != NO_LABEL)
        if len(found) < 2:
            raise UserError(f"knowledge: the ingested posts carry {len(found)} label(s), too few "
                            "to label with", hint="list the emotions in knowledge.labels, e.g. "
                                                  "labels: [Happy, Sad, Angry]")
        try:
            check_label_words(params.label_words, found)
        except ValueError as error:
            raise UserError(f"knowledge.label_words: {error}",
                            hint=f"the ingested labels are {found}") from None
        return found

    def prepare(self, ctx: StageContext[KnowledgeParams]) -> list[int]:
        self.labels(ctx)
        return ctx.input("triplets").shard_ids()

    def setup(self, ctx: StageContext[KnowledgeParams]) -> KnowledgeState:
        import torch

        from affectflow.models.clip import encode_texts, load_clip

        params = ctx.params
        torch.manual_seed(params.seed)
        clip = load_clip(params.clip, device=params.device)
        labels = self.labels(ctx)
        prompts, _ = encode_texts(clip, params.prompts(labels), params.batch_size)
        return KnowledgeState(clip, labels, prompts)

    def _encode(self, state: KnowledgeState, texts: list[str], params: KnowledgeParams
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Pooled embeddings, token outputs when asked for, and which texts were truncated."""
        from affectflow.models.clip import encode_text_tokens, encode_texts

        if params.representation == "tokens":
            return encode_text_tokens(state.clip, texts, params.batch_size)
        pooled, truncated = encode_texts(state.clip, texts, params.batch_size)
        return pooled, None, truncated

    def process(self, ctx: StageContext[KnowledgeParams], state: KnowledgeState,
                shard_id: int) -> ShardOutput:
        import torch

        params = ctx.params
        rows = ctx.input("triplets").read_shard(shard_id, columns=[SAMPLE_ID, TRIPLETS])
        captions = keyed_column(ctx.input("caption").read_shard(shard_id, [SAMPLE_ID, CAPTION]), CAPTION)
        sources = keyed_column(ctx.input("ingest").read_shard(shard_id, [SAMPLE_ID, SOURCE_ID]),
                               SOURCE_ID)
        kept: list[tuple[str, str, list[dict[str, str]]]] = []
        rejects = []
        for sample_id, triplets in zip(rows[SAMPLE_ID].to_pylist(), rows[TRIPLETS].to_pylist()):
            caption = captions.get(sample_id)
            if caption is None or not caption.strip():
                reason = "no_caption" if caption is None else "empty_caption"
                detail = ("the caption stage has no row for this sample" if caption is None else
                          "the captioner wrote no words, so there is no knowledge to embed")
                rejects.append({SAMPLE_ID: sample_id, SOURCE_ID: sources.get(sample_id),
                                "reason": reason, "detail": detail})
            else:
                kept.append((sample_id, caption, triplets))
        texts = [caption for _, caption, _ in kept]
        owner = [index for index, (_, _, triplets) in enumerate(kept) for _ in triplets]
        texts += [triplet_text(triplet) for _, _, triplets in kept for triplet in triplets]
        pooled, tokens, truncated = self._encode(state, texts, params)
        owners = torch.tensor(owner, dtype=torch.long)
        cut = truncated[:len(kept)].long().index_add_(0, owners, truncated[len(kept):].long()) > 0
        pooled_k = knowledge_representation(pooled[:len(kept)], pooled[len(kept):], owners)
        scores = label_scores(pooled_k, state.prompt_features)
        probabilities = label_probabilities(scores, params.temperature)
        best = probabilities.argmax(dim=1)
        stored = pooled_k if tokens is None else knowledge_representation(
            tokens[:len(kept)], tokens[len(kept):], owners)
        ids = pa.array([sample_id for sample_id, _, _ in kept], pa.string())
        main = pa.table({
            SAMPLE_ID: ids,
            KNOWLEDGE_LABEL: pa.array([state.labels[i] for i in best.tolist()], pa.string()),
            KNOWLEDGE_LABEL_PROBABILITY: pa.array(
                probabilities.gather(1, best[:, None])[:, 0].numpy(), pa.float32()),
            KNOWLEDGE_TRIPLETS: pa.array([len(triplets) for _, _, triplets in kept], pa.int32()),
            KNOWLEDGE_TRUNCATED: pa.array(cut.numpy(), pa.bool_())})
        side = pa.table({SAMPLE_ID: ids, KNOWLEDGE: vector_column(stored.numpy())})
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main, KNOWLEDGE: side},
                           rejects=make_rejects(rejects))

    def finalize(self, ctx: StageContext[KnowledgeParams]) -> dict[str, Any]:
        """Form of k, triplet coverage, the label distribution and the labels' accuracy."""
        from affectflow.stages.metrics import draw_confusions

        params = ctx.params
        artifact = StageArtifact(ctx.output_dir)
        table = artifact.read_all(columns=[SAMPLE_ID, KNOWLEDGE_LABEL, KNOWLEDGE_TRIPLETS,
                                           KNOWLEDGE_TRUNCATED])
        labels = self.labels(ctx)
        side_type = artifact.schema(KNOWLEDGE).field(KNOWLEDGE).type
        summary: dict[str, Any] = {
            "samples": table.num_rows, "representation": params.representation,
            "knowledge_shape": fixed_shape(side_type), "clip": params.clip,
            "labels": labels, "prompts": params.prompts(labels),
            "share_without_triplets": (round(float(pc.mean(pc.equal(
                table[KNOWLEDGE_TRIPLETS], 0)).as_py()), 4) if table.num_rows else None),
            "truncated": int(pc.sum(table[KNOWLEDGE_TRUNCATED]).as_py() or 0),
            "label_counts": dict(Counter(table[KNOWLEDGE_LABEL].to_pylist()).most_common())}
        truth = label_truth(ctx, table, labels)
        summary["accuracy"] = {name: label_accuracy(predicted, actual, labels)
                               for name, (predicted, actual) in truth.items()}
        panels = [(f"knowledge labels vs {name}", facts["confusion"])
                  for name, facts in summary["accuracy"].items() if facts]
        if panels:
            draw_confusions(ctx.output_dir / CONFUSION_FIGURE, panels, labels)
            summary["figures"] = [CONFUSION_FIGURE]
        summary["headline"] = knowledge_headline(summary)
        return summary


def fixed_shape(arrow_type: pa.DataType) -> list[int]:
    """The per-row shape of a (nested) fixed-size-list column."""
    shape = []
    while pa.types.is_fixed_size_list(arrow_type):
        shape.append(arrow_type.list_size)
        arrow_type = arrow_type.value_type
    return shape


def label_truth(ctx: StageContext[KnowledgeParams], table: pa.Table, labels: list[str]
                ) -> dict[str, tuple[list[str], list[str]]]:
    """(predicted, true) label pairs per truth source: the ingested post labels and, with a
    ground-truth file, its planted image emotions; rows whose truth is not a label are left out."""
    posts = ctx.input("ingest").read_all(columns=[SAMPLE_ID, SOURCE_ID, LABEL]).to_pylist()
    by_id = {row[SAMPLE_ID]: row for row in posts}
    rows = [(predicted, by_id.get(sample_id, {})) for sample_id, predicted in
            zip(table[SAMPLE_ID].to_pylist(), table[KNOWLEDGE_LABEL].to_pylist())]
    sources: dict[str, tuple[list[str], list[str]]] = {
        "post labels": unzip([(predicted, post.get(LABEL)) for predicted, post in rows], labels)}
    if ctx.params.ground_truth is not None:
        planted = read_ground_truth(ctx.params.ground_truth, EMOTION_COLUMNS)
        image_emotion = EMOTION_COLUMNS[0]
        sources["planted image emotion"] = unzip(
            [(predicted, planted.get(post.get(SOURCE_ID), {}).get(image_emotion))
             for predicted, post in rows], labels)
    return sources


def unzip(pairs: list[tuple[str, str | None]], labels: list[str]) -> tuple[list[str], list[str]]:
    known = [(predicted, actual) for predicted, actual in pairs if actual in labels]
    return [predicted for predicted, _ in known], [actual for _, actual in known]


def label_accuracy(predicted: list[str], actual: list[str], labels: list[str]) -> dict[str, Any] | None:
    """Accuracy with its two baselines (uniform guessing, always the commonest true label), the
    weighted F1 and the confusion matrix; None without labelled rows."""
    from affectflow.stages.metrics import classification_metrics

    if not actual:
        return None
    index = {label: position for position, label in enumerate(labels)}
    metrics = classification_metrics(np.array([index[a] for a in actual]),
                                     np.array([index[p] for p in predicted]), labels)
    commonest = Counter(actual).most_common(1)[0][1]
    return {"samples": metrics.samples, "accuracy": round(metrics.accuracy, 4),
            "weighted_f1": round(metrics.weighted_f1, 4), "chance": round(1 / len(labels), 4),
            "majority": round(commonest / len(actual), 4), "confusion": metrics.confusion}


def knowledge_headline(summary: dict[str, Any]) -> list[str]:
    """One line per truth source, for the run's console summary."""
    lines = []
    for name, facts in summary["accuracy"].items():
        if facts:
            lines.append(f"zero-shot knowledge labels vs {name}: accuracy {facts['accuracy']:.3f} "
                         f"on {facts['samples']} posts (chance {facts['chance']:.3f}, majority "
                         f"{facts['majority']:.3f})")
    return lines
