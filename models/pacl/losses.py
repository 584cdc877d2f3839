"""PACL partitioned adaptive contrastive losses (L1..L4), their masks and the progressive schedule.

Notation of the PACL paper (Eq. 3). A batch holds B image-text pairs (v_i, t_i). ``sim[i, j]`` is the
cosine similarity of image i and text j. Every sample carries a partition id (0 strong,
1 partial-emotional, 2 partial-factual, 3 weak), a factual cluster id ``f_i`` (k-means on image
features) and an emotional cluster id ``e_i`` (k-means on text features).

Readings of the paper that the code fixes:

- Anchors and partners: the loss of partition p averages over the anchors that belong to p,
  in both directions, while every sample of the (global) batch is a candidate partner. With an
  all-strong batch L1 is exactly the CLIP loss.
- Best matches: ``best_image[j] = argmax_i sim[i, j]`` and ``best_text[i] = argmax_j sim[i, j]``.
  Ties go to the lowest index, so masks are deterministic. Masks are built from detached
  similarities: they select partners and must not receive gradients.
- ``m_f(t_j)`` = images whose factual cluster equals that of ``best_image[j]``;
  ``m_f^-1(v_i)`` = texts t_j with v_i in m_f(t_j) (the transpose of m_f).
  ``m_e(v_i)`` = texts whose emotional cluster equals that of ``best_text[i]``;
  ``m_e^-1(t_j)`` = images v_i with t_j in m_e(v_i) (the transpose of m_e).
- Exclusions remove partners from an anchor's negatives only: positives are never excluded.
  The own pair often falls into its excluded set (an image is usually in the factual cluster
  of the image its text matches best); it stays the positive and stays in the denominator.
- L4 (weak): an image anchor's positive is its best text and its negatives exclude the texts
  in m_e(v_i) and in m_f^-1(v_i); a text anchor's positive is its best image and its negatives
  exclude the images in m_f(t_j) and in m_e^-1(t_j). The own pair is a plain negative there
  unless it is the best match or excluded.
- A partition with no anchor in the batch contributes exactly 0 (no NaN) and keeps the total
  connected to the graph, so ``backward()`` always works.
- The schedule counts thirds of the PRETRAINING epochs (the public code used the downstream
  epoch count). As in the paper, there is no image-text-matching head and no extra x0.1 factor
  on the contrastive sum (both only in the public code); loss weights default to its 1/.6/.6/.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import IntEnum

import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_TEMPERATURE = 0.07


class Partition(IntEnum):
    """Partition ids as stored per sample; the names key the loss dictionaries."""

    STRONG = 0
    PARTIAL_EMOTIONAL = 1
    PARTIAL_FACTUAL = 2
    WEAK = 3

    @property
    def key(self) -> str:
        return self.name.lower()


ALL_PARTITIONS: tuple[Partition, ...] = tuple(Partition)


@dataclass(frozen=True)
class PartnerMasks:
    """Best matches and the m_f / m_e sets of a batch, as boolean matrices.

    Row index = anchor, column index = partner. ``m_f`` and ``m_e_inv`` are (text, image);
    ``m_e`` and ``m_f_inv`` are (image, text).
    """

    best_text: Tensor  # (B,) best_text[i] = argmax_j sim[i, j]
    best_image: Tensor  # (B,) best_image[j] = argmax_i sim[i, j]
    m_f: Tensor  # m_f[j, k]: image k is in m_f(t_j)
    m_f_inv: Tensor  # m_f_inv[i, j]: text j is in m_f^-1(v_i)
    m_e: Tensor  # m_e[i, k]: text k is in m_e(v_i)
    m_e_inv: Tensor  # m_e_inv[j, i]: image i is in m_e^-1(t_j)


@dataclass(frozen=True)
class ContrastiveMasks:
    """Positive and excluded partners per anchor for both directions of one loss.

    ``image_*`` rows are image anchors over text partners; ``text_*`` rows are text anchors
    over image partners. All are (B, B) boolean.
    """

    image_positives: Tensor
    image_excluded: Tensor
    text_positives: Tensor
    text_excluded: Tensor


@dataclass(frozen=True)
class PaclLossWeights:
    """Weight of each partition's loss in the total; defaults follow the public code."""

    strong: float = 1.0
    partial_emotional: float = 0.6
    partial_factual: float = 0.6
    weak: float = 0.1

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"PaclLossWeights.{spec.name} must be a finite number >= 0, got {value!r}; "
                    "use 0 to switch a partition's loss off."
                )

    def of(self, partition: Partition) -> float:
        return float(getattr(self, partition.key))


def lowest_index_argmax(values: Tensor, dim: int) -> Tensor:
    """Argmax that breaks ties by the lowest index on every device, so masks are reproducible."""
    size = values.shape[dim]
    index_shape = [1] * values.dim()
    index_shape[dim] = size
    indices = torch.arange(size, device=values.device).view(index_shape).expand_as(values)
    is_max = values == values.amax(dim=dim, keepdim=True)
    return torch.where(is_max, indices, size).amin(dim=dim)


def build_partner_masks(sim: Tensor, factual: Tensor, emotional: Tensor) -> PartnerMasks:
    """m_f, m_e, their inverses and the best matches from an image-text similarity matrix."""
    with torch.no_grad():
        sim = sim.detach()
        best_text = lowest_index_argmax(sim, dim=1)
        best_image = lowest_index_argmax(sim, dim=0)
        m_f = factual[best_image].unsqueeze(1) == factual.unsqueeze(0)
        m_e = emotional[best_text].unsqueeze(1) == emotional.unsqueeze(0)
    return PartnerMasks(
        best_text=best_text,
        best_image=best_image,
        m_f=m_f,
        m_f_inv=m_f.T,
        m_e=m_e,
        m_e_inv=m_e.T,
    )


def contrastive_masks(partition: Partition, partners: PartnerMasks) -> ContrastiveMasks:
    """Positives and exclusions of the loss L1..L4 that belongs to ``partition``."""
    size = partners.best_text.shape[0]
    device = partners.best_text.device
    own_pair = torch.eye(size, dtype=torch.bool, device=device)
    if partition is Partition.STRONG:
        nothing = torch.zeros_like(own_pair)
        return ContrastiveMasks(own_pair, nothing, own_pair, nothing)
    if partition is Partition.PARTIAL_EMOTIONAL:
        return ContrastiveMasks(own_pair, partners.m_f_inv, own_pair, partners.m_f)
    if partition is Partition.PARTIAL_FACTUAL:
        return ContrastiveMasks(own_pair, partners.m_e, own_pair, partners.m_e_inv)
    rows = torch.arange(size, device=device)
    image_positives = torch.zeros_like(own_pair)
    image_positives[rows, partners.best_text] = True
    text_positives = torch.zeros_like(own_pair)
    text_positives[rows, partners.best_image] = True
    return ContrastiveMasks(
        image_positives=image_positives,
        image_excluded=partners.m_e | partners.m_f_inv,
        text_positives=text_positives,
        text_excluded=partners.m_f | partners.m_e_inv,
    )


def one_direction_loss(logits: Tensor, positives: Tensor, excluded: Tensor, anchors: Tensor) -> Tensor:
    """Eq. 3 for one direction, averaged over anchor rows; 0 when there is no anchor.

    Per row: -log(sum_P exp(logit) / sum_{P ∪ N} exp(logit)) with N = all partners not excluded.
    Computed as logsumexp over candidates minus logsumexp over positives (positives are
    non-empty in every row, so both terms are finite).
    """
    candidates = positives | ~excluded
    log_denominator = torch.logsumexp(logits.masked_fill(~candidates, float("-inf")), dim=1)
    log_numerator = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    per_anchor = log_denominator - log_numerator
    weights = anchors.to(per_anchor.dtype)
    return (per_anchor * weights).sum() / weights.sum().clamp(min=1.0)


def symmetric_loss(logits_per_image: Tensor, masks: ContrastiveMasks, anchors: Tensor) -> Tensor:
    """Half image->text plus half text->image, as in the general loss (Eq. 3)."""
    image_to_text = one_direction_loss(logits_per_image, masks.image_positives, masks.image_excluded, anchors)
    text_to_image = one_direction_loss(logits_per_image.T, masks.text_positives, masks.text_excluded, anchors)
    return 0.5 * (image_to_text + text_to_image)


def active_losses(epoch: int, total_epochs: int) -> tuple[Partition, ...]:
    """Partitions whose loss is on at ``epoch`` (0-based) of ``total_epochs`` PRETRAINING epochs.

    Epoch e lies in third floor(3e / E): third 0 -> L1; third 1 -> L1+L2+L3; third 2 -> all four.
    For E not divisible by 3 the first third is the longest (E=10: 4/3/3, E=4: 2/1/1); with
    E=2 the weak loss never starts and with E=1 only L1 runs.
    """
    if not isinstance(total_epochs, int) or total_epochs < 1:
        raise ValueError(f"total_epochs must be an int >= 1 (the pretraining epoch count), got {total_epochs!r}")
    if not isinstance(epoch, int) or not 0 <= epoch < total_epochs:
        raise ValueError(f"epoch must be an int in [0, total_epochs={total_epochs}), got {epoch!r}")
    third = (3 * epoch) // total_epochs
    if third == 0:
        return (Partition.STRONG,)
    if third == 1:
        return (Partition.STRONG, Partition.PARTIAL_EMOTIONAL, Partition.PARTIAL_FACTUAL)
    return ALL_PARTITIONS


def _check_labels(size: int, partition: Tensor, factual: Tensor, emotional: Tensor) -> None:
    for name, labels in (("partition", partition), ("factual_cluster", factual), ("emotional_cluster", emotional)):
        if labels.shape != (size,) or labels.dtype.is_floating_point:
            raise ValueError(
                f"{name} must be an integer tensor of shape ({size},), got {labels.dtype} {tuple(labels.shape)}"
            )
    if size and bool(((partition < 0) | (partition > Partition.WEAK)).any()):
        raise ValueError("partition ids must be 0 strong, 1 partial_emotional, 2 partial_factual or 3 weak")


def partitioned_loss_from_logits(
    logits_per_image: Tensor,
    partition: Tensor,
    factual_cluster: Tensor,
    emotional_cluster: Tensor,
    active: tuple[Partition, ...] = ALL_PARTITIONS,
    weights: PaclLossWeights = PaclLossWeights(),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the active partition losses over a (B, B) image-text logit matrix.

    ``logits_per_image[i, j]`` = sim(v_i, t_j) / tau. Returns the total and each active
    partition's detached loss keyed by ``Partition.key`` (inactive partitions are absent).
    """
    if not active:
        raise ValueError("active must name at least one Partition; use active_losses(epoch, total_epochs)")
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"logits_per_image must be a square (B, B) matrix, got {tuple(logits_per_image.shape)}")
    _check_labels(logits_per_image.shape[0], partition, factual_cluster, emotional_cluster)
    partners = build_partner_masks(logits_per_image, factual_cluster, emotional_cluster)
    total = logits_per_image.new_zeros(())
    per_partition: dict[str, Tensor] = {}
    for part in active:
        value = symmetric_loss(logits_per_image, contrastive_masks(part, partners), partition == part)
        per_partition[part.key] = value.detach()
        total = total + weights.of(part) * value
    return total, per_partition


def pacl_loss(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    partition: Tensor,
    factual_cluster: Tensor,
    emotional_cluster: Tensor,
    active: tuple[Partition, ...] = ALL_PARTITIONS,
    weights: PaclLossWeights = PaclLossWeights(),
    logit_scale: float = 1.0 / DEFAULT_TEMPERATURE,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PACL loss of L2-normalised (B, d) image and text embeddings; see partitioned_loss_from_logits.

    Runs in float32 with autocast off: bf16 logits would create spurious argmax ties and lose
    precision in the log-sum-exp.
    """
    if image_embeddings.dim() != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "image_embeddings and text_embeddings must both be (B, d) with the same shape, got "
            f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    with torch.autocast(device_type=image_embeddings.device.type, enabled=False):
        logits_per_image = logit_scale * image_embeddings.float() @ text_embeddings.float().T
        return partitioned_loss_from_logits(
            logits_per_image, partition, factual_cluster, emotional_cluster, active, weights
        )


def gather_with_local_grad(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor over all processes so masks see the global batch.

    Gathered copies carry no gradient; the local slice is put back so gradients reach this
    process's encoder. Every process then computes the same global loss and DDP averages the
    gradients, i.e. 1/world_size of the single-process gradient on the global batch (as with
    open_clip's ClipLoss; AdamW is insensitive to that scale). Every process must pass the same
    shapes (use drop_last in the loader). Returns the inputs unchanged when torch.distributed
    is not initialised.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    rank = dist.get_rank()
    gathered: list[Tensor] = []
    for tensor in tensors:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.detach().contiguous())
        parts[rank] = tensor
        gathered.append(torch.cat(parts, dim=0))
    return tuple(gathered)
