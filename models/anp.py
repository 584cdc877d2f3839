"""Zero-shot adjective–noun pair (ANP) detector: D(v) of PACL's emotional score, built on CLIP.

The paper describes an image by its top-3 DeepSentiBank ANPs. That detector is a Caffe CNN
whose weights are unavailable, so affectflow scores the same MVSO English vocabulary
zero-shot: each ANP becomes prompt texts ("a photo of old house."), CLIP embeds them once,
and an image's ANPs are the vocabulary entries nearest to its CLIP image embedding.

The ANP text embeddings depend only on the CLIP text tower, the vocabulary and the prompt
templates, so they are computed once per combination and cached in memory and (with
`cache_dir`) on disk, keyed by a hash of all three.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from affectflow.core.atomic import atomic_path
from affectflow.core.hashing import hash_value
from affectflow.models.clip import ClipBundle, encode_texts, text_tower_fingerprint

logger = logging.getLogger(__name__)

PACKAGED_VOCABULARY = "data/mvso_english_anps.txt"
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {}.",)
SCORE_MODES = ("cosine", "softmax")
# Bump when the way ANP embeddings are computed changes, so old cache files are not reused.
_CACHE_FORMAT = 1
_EMBEDDINGS_KEY = "anp_text_embeddings"
_ANP_PATTERN = re.compile(r"[^\s_]+_[^\s_]+")
_SCORING_CHUNK_ROWS = 1024

_memory_cache: dict[str, Tensor] = {}


class AnpMatches(NamedTuple):
    """Top-k ANPs per image: vocabulary indices (N, k), their scores (N, k), and the ANP texts."""

    indices: Tensor
    scores: Tensor
    anp_texts: list[list[str]]


def load_anp_vocabulary(path: str | os.PathLike[str] | None = None) -> list[str]:
    """ANPs (`adjective_noun`) in file order, duplicates dropped; the packaged MVSO list by default.

    Blank lines are skipped; any other line that is not one `adjective_noun` token raises a
    ValueError naming its line number, because a silently skipped concept would change which
    ANPs every image can receive.
    """
    if path is None:
        source = f"affectflow/{PACKAGED_VOCABULARY}"
        text = importlib.resources.files("affectflow").joinpath(PACKAGED_VOCABULARY).read_text("utf-8")
    else:
        source = str(path)
        text = Path(path).read_text(encoding="utf-8")
    anps: dict[str, None] = {}
    duplicates = 0
    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        if not _ANP_PATTERN.fullmatch(line):
            raise ValueError(
                f"{source} line {line_number}: {raw_line!r} is not an ANP; "
                "expected one 'adjective_noun' token per line (one underscore, no spaces)"
            )
        if line in anps:
            duplicates += 1
        else:
            anps[line] = None
    if duplicates:
        logger.warning("%s: dropped %d duplicate ANP line(s)", source, duplicates)
    if not anps:
        raise ValueError(f"{source} holds no ANPs; expected one 'adjective_noun' per line")
    return list(anps)


class AnpScorer:
    """Ranks an ANP vocabulary for images by cosine similarity in CLIP space.

    ANP text embedding = mean over `templates` of the normalised CLIP text embeddings of the
    prompt with "adjective noun" filled in, renormalised (CLIP's prompt-ensembling recipe).
    """

    def __init__(
        self,
        bundle: ClipBundle,
        vocabulary: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 256,
    ) -> None:
        _check_vocabulary(vocabulary)
        _check_templates(templates)
        self.bundle = bundle
        self.vocabulary: tuple[str, ...] = tuple(vocabulary)
        self.templates: tuple[str, ...] = tuple(templates)
        self.anp_texts: list[str] = [anp.replace("_", " ") for anp in self.vocabulary]
        self.cache_key = hash_value(
            {
                "format": _CACHE_FORMAT,
                "spec": bundle.spec,
                "text_tower": text_tower_fingerprint(bundle),
                "context_length": bundle.context_length,
                "vocabulary": self.vocabulary,
                "templates": self.templates,
            }
        )
        cache_path = None if cache_dir is None else Path(cache_dir) / f"anp-text-{self.cache_key}.safetensors"
        self.text_embeddings = self._cached_embeddings(cache_path, batch_size)

    def top_k(self, image_embeddings: Tensor, k: int = 3, score: str = "cosine") -> AnpMatches:
        """The `k` best ANPs per image embedding, best first.

        `score="cosine"` (default) reports raw cosine similarities: comparable across
        vocabularies and models. `score="softmax"` reports probabilities over the whole
        vocabulary with CLIP's logit scale, like a classifier's output. Both rank identically.
        """
        if score not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, got {score!r}")
        if not isinstance(k, int) or not 1 <= k <= len(self.vocabulary):
            raise ValueError(f"k must be an integer in [1, {len(self.vocabulary)}] (vocabulary size), got {k!r}")
        width = self.text_embeddings.shape[1]
        if image_embeddings.ndim != 2 or image_embeddings.shape[1] != width:
            raise ValueError(
                f"image_embeddings must be (N, {width}) from the same CLIP, got {tuple(image_embeddings.shape)}"
            )
        text_embeddings = self.text_embeddings.to(image_embeddings.device)
        scores: list[Tensor] = []
        indices: list[Tensor] = []
        # Chunks bound the (rows x vocabulary) similarity matrix for large shards; an empty
        # input still yields one empty chunk, so the results keep their (0, k) shapes.
        for chunk in F.normalize(image_embeddings.float(), dim=-1).split(_SCORING_CHUNK_ROWS):
            similarity = chunk @ text_embeddings.T
            if score == "softmax":
                similarity = torch.softmax(self.bundle.logit_scale * similarity, dim=1)
            chunk_scores, chunk_indices = similarity.topk(k, dim=1)
            scores.append(chunk_scores)
            indices.append(chunk_indices)
        all_indices = torch.cat(indices)
        all_scores = torch.cat(scores)
        texts = [[self.anp_texts[index] for index in row] for row in all_indices.tolist()]
        return AnpMatches(all_indices, all_scores, texts)

    def _cached_embeddings(self, cache_path: Path | None, batch_size: int) -> Tensor:
        cached = _memory_cache.get(self.cache_key)
        if cached is None and cache_path is not None and cache_path.is_file():
            cached = self._read_cache_file(cache_path)
        if cached is None:
            cached = self._compute_embeddings(batch_size)
            if cache_path is not None:
                with atomic_path(cache_path) as tmp:
                    save_file({_EMBEDDINGS_KEY: cached}, str(tmp), metadata={"spec": self.bundle.spec})
        _memory_cache[self.cache_key] = cached
        return cached

    def _read_cache_file(self, cache_path: Path) -> Tensor | None:
        """The cached embeddings, or None (recompute) when the file is unreadable or mis-shaped."""
        try:
            embeddings = load_file(str(cache_path))[_EMBEDDINGS_KEY]
        except (OSError, KeyError, SafetensorError) as error:
            logger.warning("ignoring unreadable ANP cache %s (%s); recomputing", cache_path, error)
            return None
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.vocabulary):
            logger.warning("ignoring ANP cache %s with shape %s; recomputing", cache_path, tuple(embeddings.shape))
            return None
        return embeddings

    def _compute_embeddings(self, batch_size: int) -> Tensor:
        per_template: list[Tensor] = []
        truncated = 0
        for template in self.templates:
            prompts = [template.format(anp_text) for anp_text in self.anp_texts]
            embeddings, truncated_mask = encode_texts(self.bundle, prompts, batch_size=batch_size)
            per_template.append(embeddings)
            truncated += int(truncated_mask.sum())
        if truncated:
            logger.warning("%d ANP prompt(s) exceeded CLIP's context length and were truncated", truncated)
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)


def _check_vocabulary(vocabulary: Sequence[str]) -> None:
    if isinstance(vocabulary, str) or len(vocabulary) == 0:
        raise ValueError("vocabulary must be a non-empty list of 'adjective_noun' strings (see load_anp_vocabulary)")
    for index, anp in enumerate(vocabulary):
        if not isinstance(anp, str) or not _ANP_PATTERN.fullmatch(anp):
            raise ValueError(f"vocabulary[{index}] = {anp!r} is not an 'adjective_noun' string")


def _check_templates(templates: Sequence[str]) -> None:
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("templates must be a non-empty list of prompt strings such as ('a photo of {}.',)")
    for index, template in enumerate(templates):
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"templates[{index}] = {template!r} must contain exactly one '{{}}' for the ANP")
        try:
            template.format("anp")
        except (IndexError, KeyError, ValueError) as error:
            raise ValueError(
                f"templates[{index}] = {template!r} has other braces; double them ('{{{{', '}}}}')"
            ) from error
