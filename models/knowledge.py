"""KCDP's knowledge representation and CLIEA-style zero-shot emotion labels read from it.

k = concat(T(c), Σ_i T(t_i)): T is the CLIP text encoder, c the image's caption and t_i its
triplets. A sample without triplets has its caption in both halves, as KCDP's public code does,
so every k has the same size and its second half never describes nothing. T is either the pooled,
projected and L2-normalised embedding (the paper's vector; k has 2 x embed_dim values) or the
token-level output of the text tower (the public code: 77 x 768 per text for CLIP ViT-L/14,
concatenated along the tokens to 154 x 768).

Zero-shot labels in the style of CLIEA's inference: each emotion e has the prompt "A {e} photo
of" (KCDP's CLIEA prompts), encoded by the same T; the prompt is put in the knowledge space the
way a caption without triplets is, q_e = concat(T(p_e), T(p_e)); the label is argmax_e cos(k, q_e)
and its probability softmax(cos / 0.07), CLIEA's temperature. CLIEA itself fuses prompt and
knowledge tokens with a trained multi-head attention and compares them with trained visual
features; without training, the cosine of the two pooled representations is the zero-shot part.
Knows nothing of Parquet or stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


CLIEA_PROMPT = "A {emotion} photo of"
"""KCDP's CLIEA emotion prompts ("A happy photo of", "A sad photo of", ...)."""
CLIEA_TEMPERATURE = 0.07


def knowledge_representation(captions: Tensor, triplets: Tensor, owner: Tensor) -> Tensor:
    """k per sample from caption features (n, ...) and triplet features (m, ...) whose sample
    index is `owner` (m,): concat along the first feature axis of the caption's and the sum of
    the sample's triplets' features (the caption's own where it has none)."""
    import torch

    if triplets.shape[1:] != captions.shape[1:] or owner.shape != triplets.shape[:1]:
        raise ValueError(f"triplet features {tuple(triplets.shape)} and owners {tuple(owner.shape)} "
                         f"do not fit caption features {tuple(captions.shape)}")
    sums = torch.zeros_like(captions).index_add_(0, owner, triplets.to(captions.dtype))
    counts = torch.bincount(owner, minlength=captions.shape[0])
    has_triplets = (counts > 0).reshape(-1, *([1] * (captions.dim() - 1)))
    return torch.cat([captions, torch.where(has_triplets, sums, captions)], dim=1)


def label_scores(knowledge: Tensor, prompts: Tensor) -> Tensor:
    """cos(k_i, concat(T(p_e), T(p_e))) for pooled k (n, 2d) and prompt embeddings (classes, d)."""
    import torch
    import torch.nn.functional as F

    if knowledge.dim() != 2 or prompts.dim() != 2 or knowledge.shape[1] != 2 * prompts.shape[1]:
        raise ValueError(f"pooled knowledge {tuple(knowledge.shape)} needs prompts of half its width, "
                         f"got {tuple(prompts.shape)}")
    queries = torch.cat([prompts, prompts], dim=1)
    return F.normalize(knowledge.float(), dim=1) @ F.normalize(queries.float(), dim=1).T


def label_probabilities(scores: Tensor, temperature: float = CLIEA_TEMPERATURE) -> Tensor:
    import torch

    return torch.softmax(scores / temperature, dim=1)
