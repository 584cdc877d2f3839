"""Settings of a frozen sentence encoder, shared by the stages that encode post texts.

Two stages encode texts with different encoders for different jobs: `emotional` scores Eq. 2 with
BERTweet, `teacher` computes the frozen text tower's features that `cluster` and `pacl` use (SKEP
in the paper). Both take the same four settings, recorded with a trained PACL model so that
zero-shot prompts are encoded exactly like the training texts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from affectflow.core.stage import StageParams
from affectflow.models.specs import resolve_transformers_spec
from affectflow.models.text_encoder import DEFAULT_TEXT_ENCODER, TextEncoder, load_text_encoder
from affectflow.stages.param_types import TransformersModel

TEXT_ENCODER_KEYS = ("text_encoder", "pooling", "normalize_tweets", "max_length")
"""What decides a text's features besides the text: the model and how its output is pooled."""


class TextEncoderParams(StageParams):
    """A transformers sentence encoder (hub id, local folder or packaged:<name>) and its pooling;
    subclasses change the defaults to the encoder their job needs."""

    text_encoder: TransformersModel = Field(DEFAULT_TEXT_ENCODER,
                                            description="hub id, local folder or packaged:<name>")
    pooling: Literal["mean", "cls"] = Field("mean", description="mean over tokens, or the first "
                                            "(CLS) token's last hidden state")
    normalize_tweets: bool | None = Field(None, description="BERTweet text normalisation; "
                                          "default: on for BERTweet models")
    max_length: int | None = Field(None, ge=2, description="tokens kept per text; default: the "
                                   "tokenizer's model_max_length")

    def encoder_settings(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in TEXT_ENCODER_KEYS}

    def load_encoder(self, device: str | None) -> TextEncoder:
        return load_text_encoder(resolve_transformers_spec(self.text_encoder), pooling=self.pooling,
                                 normalize_tweets=self.normalize_tweets, device=device,
                                 max_length=self.max_length)


def load_recorded_encoder(settings: dict[str, Any], device: str | None) -> TextEncoder:
    """The encoder a stage recorded with `encoder_settings` (e.g. in a PACL model's config)."""
    return TextEncoderParams(**{key: settings.get(key) for key in TEXT_ENCODER_KEYS
                                if settings.get(key) is not None}).load_encoder(device)
