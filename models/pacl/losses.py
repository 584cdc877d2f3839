"""PACL partitioned adaptive contrastive losses (L1..L4), their masks and the progressive schedule.

Notation of the PACL paper (Eq. 3-14). A batch holds B image-text pairs (v_i, t_i). ``sim[i, j]`` is
the cosine similarity of image i and text j. Every sample carries a partition id (0 strong,
1 partial-emotional, 2 partial-factual, 3 weak), a factual cluster id ``f_i`` (k-means on image
features) and an emotional cluster id ``e_i`` (k-means on the teacher's text features).

The general loss (Eq. 3) of one direction, for an anchor with positives P and negatives N:
``-log(sum_P exp(s / tau) / (sum_P exp(s / tau) + sum_N exp(s / tau)))``, averaged over the
anchors, half image->text plus half text->image. Each loss L1..L4 only defines P and N:

- L1 strong: P = {i}; N = {j | j != i}. With an all-strong batch this is exactly the CLIP loss.
- L2 partial-emotional: P = {i}; N(t_i) = {j | j != i, v_j not in m_f(t_i)} and
  N(v_i) = {j | j != i, t_j not in m_f^-1(v_i)}.
- L3 partial-factual: P = {i}; N(v_i) = {j | j != i, t_j not in m_e(v_i)} and
  N(t_i) = {j | j != i, v_j not in m_e^-1(t_i)}.
- L4 weak: the positives are rebuilt as best matches, P(v_i) = {best_text[i]} and
  P(t_i) = {best_image[i]}; N(v_i) = {j | j != i, t_j not in m_e(v_i) and not in m_f^-1(v_i)},
  N(t_i) = {j | j != i, v_j not in m_f(t_i) and not in m_e^-1(t_i)} (Eq. 14). The own pair i is
  never a negative; it is in the denominator only when it is the best match (then P = {i}).

with ``best_text[i] = argmax_j sim[i, j]``, ``best_image[j] = argmax_i sim[i, j]`` (ties to the
lowest index, so masks are reproducible), ``m_f(t_j)`` = images whose factual cluster is that of
``best_image[j]``, ``m_f^-1(v_i)`` = texts t_j with v_i in m_f(t_j) (the transpose),
``m_e(v_i)`` = texts whose emotional cluster is that of ``best_text[i]``, ``m_e^-1(t_j)`` = images
v_i with t_j in m_e(v_i). P and N never overlap (L4's best match lies in its own m_e / m_f set).
Masks come from detached similarities: they select partners and receive no gradient.

Which samples are candidates (``candidates``):

- ``partition`` (default; the paper's "solely on this partition" and the public code, which runs
  one forward per partition): loss p is computed on the sub-batch of partition p alone, so
  best matches, m_f / m_e and the negatives are all drawn from that partition's samples.
- ``batch``: the anchors are partition p's samples, but every sample of the mixed micro-batch
  is a candidate partner (best matches and negatives range over the whole batch).

A partition with no sample in the batch contributes exactly 0 (no NaN) and keeps the total
connected to the graph, so ``backward()`` always works. The schedule counts thirds of the
PRETRAINING epochs (the public code used the downstream epoch count). As in the paper there is
no image-text-matching head and no extra x0.1 on the contrastive sum (both only in the public
code). Loss weights default to the paper's plain sum (Eq. 16-17); the public code's
1 / 0.6 / 0.6 / 0.1 is the named option ``public_code``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor


DEFAULT_TEMPERATURE = 0.07

Candidates = Literal["partition", "batch"]
CANDIDATE_MODES: tuple[Candidates, ...] = ("partition", "batch")
DEFAULT_CANDIDATES: Candidates = "partition"


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
    """Positive and negative partners per anchor for both directions of one loss.

    ``image_*`` rows are image anchors over text partners; ``text_*`` rows are text anchors
    over image partners. All are (B, B) boolean; positives and negatives never overlap.
    """

    image_positives: Tensor
    image_negatives: Tensor
    text_positives: Tensor
    text_negatives: Tensor


@dataclass(frozen=True)
class PaclLossWeights:
    """Weight of each partition's loss in the total; the default is the paper's plain sum."""

    strong: float = 1.0
    partial_emotional: float = 1.0
    partial_factual: float = 1.0
    weak: float = 1.0

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

    def in_partition_order(self) -> tuple[float, float, float, float]:
        return self.strong, self.partial_emotional, self.partial_factual, self.weak


LOSS_WEIGHT_PRESETS: dict[str, PaclLossWeights] = {
    "paper": PaclLossWeights(),  # Eq. 16-17: L = L1 + L2 + L3 + L4 (in the last third)
    "public_code": PaclLossWeights(1.0, 0.6, 0.6, 0.1),  # wdqqdw/PACL's weight_a234
}
"""Named loss weightings a config can choose by name."""


def lowest_index_argmax(values: Tensor, dim: int) -> Tensor:
    """Argmax that breaks ties by the lowest index on every device, so masks are reproducible."""
    import torch

    size = values.shape[dim]
    index_shape = [1] * values.dim()
    index_shape[dim] = size
    indices = torch.arange(size, device=values.device).view(index_shape).expand_as(values)
    is_max = values == values.amax(dim=dim, keepdim=True)
    return torch.where(is_max, indices, size).amin(dim=dim)


def build_partner_masks(sim: Tensor, factual: Tensor, emotional: Tensor) -> PartnerMasks:
    """m_f, m_e, their inverses and the best matches from an image-text similarity matrix."""
    import torch

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
    """Positives and negatives of the loss L1..L4 that belongs to ``partition`` (Eq. 4-14)."""
    import torch

    size = partners.best_text.shape[0]
    device = partners.best_text.device
    own_pair = torch.eye(size, dtype=torch.bool, device=device)
    others = ~own_pair  # every N is {j | j != i, ...}
    if partition is Partition.STRONG:
        return ContrastiveMasks(own_pair, others, own_pair, others)
    if partition is Partition.PARTIAL_EMOTIONAL:
        return ContrastiveMasks(own_pair, others & ~partners.m_f_inv, own_pair, others & ~partners.m_f)
    if partition is Partition.PARTIAL_FACTUAL:
        return ContrastiveMasks(own_pair, others & ~partners.m_e, own_pair, others & ~partners.m_e_inv)
    rows = torch.arange(size, device=device)
    image_positives = torch.zeros_like(own_pair)
    image_positives[rows, partners.best_text] = True
    text_positives = torch.zeros_like(own_pair)
    text_positives[rows, partners.best_image] = True
    return ContrastiveMasks(
        image_positives=image_positives,
        image_negatives=others & ~(partners.m_e | partners.m_f_inv),
        text_positives=text_positives,
        text_negatives=others & ~(partners.m_f | partners.m_e_inv),
    )


def one_direction_loss(logits: Tensor, positives: Tensor, negatives: Tensor, anchors: Tensor) -> Tensor:
    """Eq. 3 for one direction, averaged over anchor rows; 0 when there is no anchor.

    Per row: -log(sum_P exp(logit) / sum_{P ∪ N} exp(logit)), computed as logsumexp over
    P ∪ N minus logsumexp over P (P is non-empty in every row, so both terms are finite).
    """
    import torch

    log_denominator = torch.logsumexp(logits.masked_fill(~(positives | negatives), float("-inf")), dim=1)
    log_numerator = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    per_anchor = log_denominator - log_numerator
    weights = anchors.to(per_anchor.dtype)
    return (per_anchor * weights).sum() / weights.sum().clamp(min=1.0)


def symmetric_loss(logits_per_image: Tensor, masks: ContrastiveMasks, anchors: Tensor) -> Tensor:
    """Half image->text plus half text->image, as in the general loss (Eq. 3)."""
    image_to_text = one_direction_loss(logits_per_image, masks.image_positives, masks.image_negatives, anchors)
    text_to_image = one_direction_loss(logits_per_image.T, masks.text_positives, masks.text_negatives, anchors)
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


def _partition_loss_on_sub_batch(logits_per_image: Tensor, members: Tensor, factual: Tensor,
                                 emotional: Tensor, part: Partition) -> Tensor:
    """Loss ``part`` over the sub-batch ``members`` alone: every member is an anchor and only
    members are partners (an empty sub-batch gives 0, still attached to the graph)."""
    import torch

    if members.numel() == 0:
        return logits_per_image[:0].sum()  # exactly 0, and backward() still reaches the logits
    sub = logits_per_image.index_select(0, members).index_select(1, members)
    partners = build_partner_masks(sub, factual[members], emotional[members])
    anchors = torch.ones(members.numel(), dtype=torch.bool, device=sub.device)
    return symmetric_loss(sub, contrastive_masks(part, partners), anchors)


def partitioned_loss_from_logits(
    logits_per_image: Tensor,
    partition: Tensor,
    factual_cluster: Tensor,
    emotional_cluster: Tensor,
    active: tuple[Partition, ...] = ALL_PARTITIONS,
    weights: PaclLossWeights = PaclLossWeights(),
    candidates: Candidates = DEFAULT_CANDIDATES,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the active partition losses over a (B, B) image-text logit matrix.

    ``logits_per_image[i, j]`` = sim(v_i, t_j) / tau. Returns the total and each active
    partition's detached loss keyed by ``Partition.key`` (inactive partitions are absent).
    """
    import torch

    if not active:
        raise ValueError("active must name at least one Partition; use active_losses(epoch, total_epochs)")
    if candidates not in CANDIDATE_MODES:
        raise ValueError(f"candidates must be one of {CANDIDATE_MODES}, got {candidates!r}")
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"logits_per_image must be a square (B, B) matrix, got {tuple(logits_per_image.shape)}")
    _check_labels(logits_per_image.shape[0], partition, factual_cluster, emotional_cluster)
    batch_partners = (build_partner_masks(logits_per_image, factual_cluster, emotional_cluster)
                      if candidates == "batch" else None)
    total = logits_per_image.new_zeros(())
    per_partition: dict[str, Tensor] = {}
    for part in active:
        if batch_partners is None:
            members = torch.nonzero(partition == part).flatten()
            value = _partition_loss_on_sub_batch(logits_per_image, members, factual_cluster,
                                                 emotional_cluster, part)
        else:
            value = symmetric_loss(logits_per_image, contrastive_masks(part, batch_partners), partition == part)
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
    candidates: Candidates = DEFAULT_CANDIDATES,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PACL loss of L2-normalised (B, d) image and text embeddings; see partitioned_loss_from_logits.

    Runs in float32 with autocast off: bf16 logits would create spurious argmax ties and lose
    precision in the log-sum-exp.
    """
    import torch

    if image_embeddings.dim() != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "image_embeddings and text_embeddings must both be (B, d) with the same shape, got "
            f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    with torch.autocast(device_type=image_embeddings.device.type, enabled=False):
        logits_per_image = logit_scale * image_embeddings.float() @ text_embeddings.float().T
        return partitioned_loss_from_logits(
            logits_per_image, partition, factual_cluster, emotional_cluster, active, weights, candidates
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
    import torch
    import torch.distributed as dist

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
