"""`caption`: one caption per post image (KCDP's knowledge source), from BLIP or InstructBLIP.

Images are decoded and resized into pixel tensors by the loader's worker processes
(`prefetched_image_batches`) while the model generates the previous batch, so loading hides
behind generation. The prompt part of a batch is the same for every image: it is tokenised once
in `setup` and repeated per batch, so the tokenizer is used by this process only. An image
that no longer loads (changed or removed since ingest) becomes an `image_load_failed` reject.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from affectflow.core.progress import Progress
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, SOURCE_ID, StageArtifact, make_rejects
from affectflow.models.specs import local_weights, models_fingerprint
from affectflow.stages.ingest.stage import IMAGE_PATH
from affectflow.stages.param_types import Device, TransformersModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from affectflow.models.captioner import CaptionBatch, TransformersCaptioner

logger = logging.getLogger(__name__)

DEFAULT_MODELS = {
    "instructblip": "Salesforce/instructblip-flan-t5-xl",
    "blip": "Salesforce/blip-image-captioning-base",
}
"""Per-family default checkpoints; InstructBLIP flan-t5-xl is the one the KCDP paper used."""

PIXEL_KEY = "pixel_values"
"""The only image-dependent input of BLIP/InstructBLIP processors; the rest is the prompt."""

CAPTION = "caption"
CAPTIONER = "captioner"
SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), (CAPTION, pa.string()), (CAPTIONER, pa.string())])


class CaptionParams(StageParams):
    """Which captioner, prompt and generation settings; None means the family default."""

    kind: Literal["blip", "instructblip"] = "instructblip"
    model: TransformersModel = Field(description="hub id or local folder saved with save_pretrained; default "
                                   "per kind (InstructBLIP: Salesforce/instructblip-flan-t5-xl)")
    prompt: str | None = Field(None, description="None: no prompt for BLIP, the KCDP prompt for "
                                                 "InstructBLIP")
    num_beams: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int | None = Field(None, ge=0)
    batch_size: int = Field(16, ge=1)
    device: Device = None

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        """Fill `model` from `kind`, so `kind: blip` alone does not load an InstructBLIP id."""
        if isinstance(data, dict) and data.get("model") is None:
            kind = data.get("kind", "instructblip")
            if kind in DEFAULT_MODELS:
                return {**data, "model": DEFAULT_MODELS[kind]}
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("prompt is blank; omit the key for the family default prompt")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CaptionParams:
        from affectflow.models.captioner import validate_generation

        validate_generation(self.generation_with_defaults())
        local = local_weights("transformers", self.model)
        config_file = local / "config.json" if local is not None and local.is_dir() else None
        if config_file is not None and config_file.is_file():
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
            if model_type != self.kind:
                raise ValueError(f"model {self.model} holds a {model_type!r} model but kind is "
                                 f"{self.kind!r}; set kind to {model_type!r} or point model at a "
                                 f"{self.kind} folder")
        return self

    def generation(self) -> dict[str, int | float]:
        """The generation settings given in the config (the rest stay family defaults)."""
        from affectflow.models.captioner import GENERATION_KEYS

        values = {key: getattr(self, key) for key in GENERATION_KEYS}
        return {key: value for key, value in values.items() if value is not None}

    def generation_with_defaults(self) -> dict[str, int | float]:
        from affectflow.models.captioner import CAPTIONER_KINDS

        return {**CAPTIONER_KINDS[self.kind].default_generation, **self.generation()}


@dataclass
class CaptionState:
    """The loaded captioner plus the prompt inputs shared by every batch."""

    captioner: TransformersCaptioner
    prompt_features: dict[str, torch.Tensor]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """One image's model input; runs in worker threads (image processor only, no tokenizer)."""
        processor = self.captioner.preprocessor.processor.image_processor
        return processor(images=[image], return_tensors="pt")[PIXEL_KEY][0]

    def batch(self, pixels: torch.Tensor) -> CaptionBatch:
        """Pixels of n images plus n fresh copies of the prompt inputs (generate edits them)."""
        from affectflow.models.captioner import CaptionBatch

        count = pixels.shape[0]
        features = {name: value.repeat(count, *([1] * (value.dim() - 1)))
                    for name, value in self.prompt_features.items()}
        return CaptionBatch(features={**features, PIXEL_KEY: pixels}, size=count)


def prompt_features(captioner: TransformersCaptioner) -> dict[str, torch.Tensor]:
    """Image-independent inputs (prompt token ids and masks) for one image, computed once."""
    from PIL import Image

    probe = captioner.preprocess([Image.new("RGB", (8, 8))])
    return {name: value for name, value in probe.features.items() if name != PIXEL_KEY}


def caption_shard(state: CaptionState, paths: list[str], batch_size: int, workers: int,
                  on_batch: Callable[[int], None]) -> tuple[dict[int, str], list[tuple[int, str]]]:
    """Captions by row index and (index, error) for images that failed to load."""
    from affectflow.stages.batching import prefetched_image_batches

    captions: dict[int, str] = {}
    failures: list[tuple[int, str]] = []
    for batch in prefetched_image_batches(paths, batch_size, state.pixels, workers):
        failures += batch.failures
        if batch.pixels is not None:
            captions.update(zip(batch.indices, state.captioner.generate(state.batch(batch.pixels))))
        on_batch(len(batch.indices) + len(batch.failures))
    return captions, failures


class CaptionStage(Stage[CaptionParams]):
    name = "caption"
    inputs = ("ingest",)
    reads = (TableRef("ingest", (SAMPLE_ID, SOURCE_ID, IMAGE_PATH)),)
    Params = CaptionParams
    schema = SCHEMA

    def source_fingerprint(self, params: CaptionParams, settings: Any) -> str:
        return models_fingerprint(("transformers", params.model))

    def setup(self, ctx: StageContext[CaptionParams]) -> CaptionState:
        from affectflow.models.captioner import load_captioner

        params = ctx.params
        captioner = load_captioner(params.kind, params.model, device=params.device,
                                   prompt=params.prompt, **params.generation())
        logger.info("caption: %s on %s", captioner.spec, captioner.device)
        return CaptionState(captioner, prompt_features(captioner))

    def process(self, ctx: StageContext[CaptionParams], state: CaptionState,
                shard_id: int) -> ShardOutput:
        params = ctx.params
        rows = ctx.input("ingest").read_shard(shard_id, columns=[SAMPLE_ID, SOURCE_ID, IMAGE_PATH])
        ids = rows[SAMPLE_ID].to_pylist()
        sources = rows[SOURCE_ID].to_pylist()
        progress = Progress(f"caption shard {shard_id}", total=rows.num_rows, unit="rows")
        captions, failures = caption_shard(state, rows[IMAGE_PATH].to_pylist(),
                                           params.batch_size, ctx.settings.workers,
                                           progress.advance)
        progress.close()
        kept = sorted(captions)
        main = pa.table({SAMPLE_ID: pa.array([ids[i] for i in kept], pa.string()),
                         CAPTION: pa.array([captions[i] for i in kept], pa.string()),
                         CAPTIONER: pa.array([state.captioner.spec] * len(kept), pa.string())})
        rejects = make_rejects([{SAMPLE_ID: ids[i], SOURCE_ID: sources[i],
                                 "reason": "image_load_failed", "detail": error}
                                for i, error in failures])
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main}, rejects=rejects)

    def finalize(self, ctx: StageContext[CaptionParams]) -> dict[str, Any]:
        """Caption length, empties and variety: a collapsed captioner repeats one sentence."""
        table = StageArtifact(ctx.output_dir).read_all(columns=[CAPTION, CAPTIONER])
        captions = table[CAPTION].to_pylist()
        if not captions:
            return {"captions": 0}
        words = np.array([len(caption.split()) for caption in captions])
        return {"captions": len(captions),
                "captioner": table[CAPTIONER][0].as_py(),
                "mean_words": round(float(words.mean()), 2),
                "empty_captions": int((words == 0).sum()),
                "distinct_share": round(len(set(captions)) / len(captions), 4)}
