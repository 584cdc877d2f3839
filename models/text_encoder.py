"""Frozen sentence encoder B(.) of the emotional score: any transformers encoder, pooled and normalised.

PACL's emotional score is cosine(B(top-3 ANPs of the image), B(post text)) with B = BERTweet
(`vinai/bertweet-base`, the default here). Any encoder AutoModel can load works the same way
(SKEP, all-MiniLM-L6-v2, a local directory): mean pooling over the attention mask is the
sentence-transformers recipe; CLS pooling is what SKEP-style classifiers were tuned with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from transformers import PreTrainedTokenizerBase



DEFAULT_TEXT_ENCODER = "vinai/bertweet-base"
POOLING_MODES = ("mean", "cls")
# transformers stores "no declared limit" as a huge sentinel (int(1e30)) in model_max_length.
_UNDECLARED_MAX_LENGTH = 1_000_000


class TextEncoder:
    """A loaded encoder that maps texts to L2-normalised float32 sentence embeddings."""

    def __init__(
        self,
        spec: str,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pooling: str,
        normalize_tweets: bool,
        max_length: int,
        device: torch.device,
    ) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize_tweets = normalize_tweets
        self.max_length = max_length
        self.device = device

    @property
    def dim(self) -> int:
        """Embedding width (the encoder's hidden size)."""
        return int(self.model.config.hidden_size)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text before truncation, special tokens included: more than
        `max_length` means `encode` saw only the first `max_length` of them."""
        from affectflow.models.tweet_normalize import normalize_tweet

        prepared = [normalize_tweet(text) for text in texts] if self.normalize_tweets else list(texts)
        return [len(ids) for ids in self.tokenizer(prepared, truncation=False, verbose=False)["input_ids"]]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """(len(texts), dim) float32 CPU tensor of unit vectors, in input order.

        Texts are batched longest-first so each batch pads to similar lengths; with the
        attention mask, padding does not change any embedding, so results do not depend on
        `batch_size` (up to float tolerance). Texts beyond `max_length` tokens are truncated.
        """
        import torch

        from affectflow.models.tweet_normalize import normalize_tweet

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        prepared = [normalize_tweet(text) for text in texts] if self.normalize_tweets else list(texts)
        order = sorted(range(len(prepared)), key=lambda i: len(prepared[i]), reverse=True)
        embeddings = torch.empty(len(prepared), self.dim, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            embeddings[positions] = self._encode_batch([prepared[i] for i in positions])
        return embeddings

    def _encode_batch(self, texts: list[str]) -> Tensor:
        import torch.nn.functional as F

        from affectflow.models.encoder_runtime import inference_context

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {name: values.to(self.device, non_blocking=True) for name, values in batch.items()}
        with inference_context(self.device):
            hidden = self.model(**batch).last_hidden_state
        hidden = hidden.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1).cpu()


def load_text_encoder(
    name_or_path: str | os.PathLike[str] = DEFAULT_TEXT_ENCODER,
    pooling: str = "mean",
    normalize_tweets: bool | None = None,
    device: str | torch.device | None = None,
    max_length: int | None = None,
) -> TextEncoder:
    """Load a hub id or local directory through AutoTokenizer/AutoModel, in eval mode.

    `normalize_tweets=None` turns BERTweet normalisation on for BERTweet models (name or
    tokenizer class), whose pretraining text was normalised that way, and off otherwise.
    `max_length=None` uses the tokenizer's declared `model_max_length` (sentence-transformers
    caps all-MiniLM-L6-v2 at 256 instead; pass 256 to match it on very long texts).
    """
    from transformers import AutoModel, AutoTokenizer

    from affectflow.models.encoder_runtime import resolve_device

    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer >= 2 or None, got {max_length!r}")
    spec = str(name_or_path)
    resolved_device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(spec)
    if max_length is None:
        max_length = int(tokenizer.model_max_length)
        if max_length > _UNDECLARED_MAX_LENGTH:
            raise ValueError(
                f"the tokenizer of {spec!r} declares no model_max_length; pass max_length= "
                "(the model's usable positions, e.g. 512 for BERT, 128 for BERTweet)"
            )
    if normalize_tweets is None:
        normalize_tweets = "bertweet" in spec.lower() or type(tokenizer).__name__.startswith("Bertweet")
    model = AutoModel.from_pretrained(spec).to(resolved_device).eval()
    return TextEncoder(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        pooling=pooling,
        normalize_tweets=normalize_tweets,
        max_length=max_length,
        device=resolved_device,
    )
