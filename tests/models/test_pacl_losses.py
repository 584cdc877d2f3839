"""PACL losses checked against open_clip's ClipLoss and against a brute-force construction of Eq. 3-14."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from affectflow.models.pacl.losses import (
    ALL_PARTITIONS,
    LOSS_WEIGHT_PRESETS,
    PaclLossWeights,
    Partition,
    active_losses,
    build_partner_masks,
    contrastive_masks,
    gather_with_local_grad,
    one_direction_loss,
    pacl_loss,
    partitioned_loss_from_logits,
)

torch.set_num_threads(1)

STRONG, PARTIAL_EMOTIONAL, PARTIAL_FACTUAL, WEAK = ALL_PARTITIONS


# ---------------------------------------------------------------- brute force, straight from Eq. 3-14
# Written from the paper's set definitions with Python loops and sets, sharing nothing with the
# vectorised code: for every anchor its positive set P and negative set N, then Eq. 3 as
# -log(sum_P exp / (sum_P exp + sum_N exp)). Candidates are the anchor's partition alone
# ("partition") or the whole batch ("batch").
def argmax_lowest(values: dict[int, float]) -> int:
    top = max(values.values())
    return min(index for index, value in values.items() if value == top)


def brute_sets(sim: list[list[float]], pool: list[int], factual: list[int], emotional: list[int]) -> dict:
    """best_text, best_image, m_f, m_f^-1, m_e, m_e^-1 over the candidate pool (global indices)."""
    best_text = {i: argmax_lowest({j: sim[i][j] for j in pool}) for i in pool}
    best_image = {j: argmax_lowest({i: sim[i][j] for i in pool}) for j in pool}
    m_f = {j: {k for k in pool if factual[k] == factual[best_image[j]]} for j in pool}  # images
    m_f_inv = {i: {j for j in pool if i in m_f[j]} for i in pool}  # texts
    m_e = {i: {k for k in pool if emotional[k] == emotional[best_text[i]]} for i in pool}  # texts
    m_e_inv = {j: {i for i in pool if j in m_e[i]} for j in pool}  # images
    return {"best_text": best_text, "best_image": best_image, "m_f": m_f, "m_f_inv": m_f_inv,
            "m_e": m_e, "m_e_inv": m_e_inv}


# Per direction: the set L2 excludes, the set L3 excludes, and the best match L4 takes as positive.
# Image anchors v_i have text partners, text anchors t_i image partners (Eq. 4-14).
DIRECTIONS = {"image": ("m_f_inv", "m_e", "best_text"), "text": ("m_f", "m_e_inv", "best_image")}


def brute_anchor_sets(part: Partition, sets: dict, pool: list[int], i: int, direction: str
                      ) -> tuple[set[int], set[int]]:
    """(P, N) of anchor i in one direction; every N is {j | j != i, ...}."""
    factual_set, emotional_set, best = DIRECTIONS[direction]
    others = {j for j in pool if j != i}
    if part is STRONG:
        return {i}, others
    if part is PARTIAL_EMOTIONAL:
        return {i}, {j for j in others if j not in sets[factual_set][i]}
    if part is PARTIAL_FACTUAL:
        return {i}, {j for j in others if j not in sets[emotional_set][i]}
    return {sets[best][i]}, {j for j in others if j not in sets[factual_set][i] and j not in sets[emotional_set][i]}


def eq3_term(scores: dict[int, torch.Tensor], positives: set[int], negatives: set[int]) -> torch.Tensor:
    numerator = sum(torch.exp(scores[p]) for p in positives)
    return -torch.log(numerator / (numerator + sum(torch.exp(scores[n]) for n in negatives)))


def brute_loss(logits: torch.Tensor, partition: list[int], factual: list[int], emotional: list[int],
               part: Partition, candidates: str) -> torch.Tensor:
    """L_part of one batch (differentiable in `logits`; the sets use its detached values)."""
    size = logits.shape[0]
    anchors = [i for i in range(size) if partition[i] == part]
    if not anchors:
        return torch.zeros((), dtype=logits.dtype)
    pool = anchors if candidates == "partition" else list(range(size))
    sets = brute_sets(logits.detach().tolist(), pool, factual, emotional)
    image_terms, text_terms = [], []
    for i in anchors:
        positives, negatives = brute_anchor_sets(part, sets, pool, i, "image")
        assert not positives & negatives
        image_terms.append(eq3_term({j: logits[i, j] for j in pool}, positives, negatives))
        positives, negatives = brute_anchor_sets(part, sets, pool, i, "text")
        assert not positives & negatives
        text_terms.append(eq3_term({j: logits[j, i] for j in pool}, positives, negatives))
    return 0.5 * (sum(image_terms) / len(image_terms) + sum(text_terms) / len(text_terms))


def mask_to_sets(mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask]


# ---------------------------------------------------------------- batches
def tied_batch(size: int, seed: int, pure: Partition | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits on a coarse grid (many exact ties) and random labels with 2-3 clusters; all
    samples in partition `pure` when given, mixed otherwise."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randint(-3, 4, (size, size), generator=generator).double() / 2
    partition = torch.randint(0, 4, (size,), generator=generator)
    if pure is not None:
        partition = torch.full((size,), int(pure))
    factual = torch.randint(0, 2, (size,), generator=generator)
    emotional = torch.randint(0, 3, (size,), generator=generator)
    return logits, partition, factual, emotional


def random_embeddings(size: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    return images, texts


BATCHES = [(size, seed) for size in (1, 2, 5, 9, 16) for seed in range(4)]
MODES = ("partition", "batch")


# ---------------------------------------------------------------- L1 == CLIP
@pytest.mark.parametrize("candidates", MODES)
def test_strong_loss_equals_open_clip_clip_loss(candidates: str) -> None:
    images, texts = random_embeddings(16, 8, seed=0)
    labels = torch.zeros(16, dtype=torch.long)
    logit_scale = 1.0 / 0.07
    total, per_partition = pacl_loss(images, texts, labels, labels, labels, active=(STRONG,),
                                     logit_scale=logit_scale, candidates=candidates)
    expected = ClipLoss()(images, texts, torch.tensor(logit_scale))
    torch.testing.assert_close(per_partition["strong"], expected)
    torch.testing.assert_close(total, expected)


def test_partition_candidates_give_clip_loss_of_the_strong_sub_batch_in_a_mixed_batch() -> None:
    images, texts = random_embeddings(12, 8, seed=1)
    partition = torch.tensor([0, 3, 1, 0, 2, 0, 0, 3, 1, 0, 2, 3])
    clusters = torch.arange(12) % 2
    strong = partition == 0
    _, per_partition = pacl_loss(images, texts, partition, clusters, clusters, active=(STRONG,))
    expected = ClipLoss()(images[strong], texts[strong], torch.tensor(1 / 0.07))
    torch.testing.assert_close(per_partition["strong"], expected)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize(("size", "seed"), BATCHES)
def test_partner_masks_match_brute_force(size: int, seed: int) -> None:
    logits, _, factual, emotional = tied_batch(size, seed)
    partners = build_partner_masks(logits, factual, emotional)
    pool = list(range(size))
    expected = brute_sets(logits.tolist(), pool, factual.tolist(), emotional.tolist())
    assert partners.best_text.tolist() == [expected["best_text"][i] for i in pool]
    assert partners.best_image.tolist() == [expected["best_image"][j] for j in pool]
    for name in ("m_f", "m_f_inv", "m_e", "m_e_inv"):
        assert mask_to_sets(getattr(partners, name)) == [expected[name][i] for i in pool], name


def test_argmax_ties_go_to_lowest_index() -> None:
    logits = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    partners = build_partner_masks(logits, labels, labels)
    assert partners.best_text.tolist() == [1, 0, 0]
    assert partners.best_image.tolist() == [2, 0, 0]


@pytest.mark.parametrize("part", ALL_PARTITIONS)
@pytest.mark.parametrize(("size", "seed"), BATCHES)
def test_positive_and_negative_sets_match_brute_force(part: Partition, size: int, seed: int) -> None:
    logits, _, factual, emotional = tied_batch(size, seed)
    masks = contrastive_masks(part, build_partner_masks(logits, factual, emotional))
    pool = list(range(size))
    sets = brute_sets(logits.tolist(), pool, factual.tolist(), emotional.tolist())
    for anchor in pool:
        assert (mask_to_sets(masks.image_positives)[anchor], mask_to_sets(masks.image_negatives)[anchor]) \
            == brute_anchor_sets(part, sets, pool, anchor, "image")
        assert (mask_to_sets(masks.text_positives)[anchor], mask_to_sets(masks.text_negatives)[anchor]) \
            == brute_anchor_sets(part, sets, pool, anchor, "text")


# ---------------------------------------------------------------- loss values
@pytest.mark.parametrize("candidates", MODES)
@pytest.mark.parametrize(("size", "seed"), BATCHES)
def test_partition_losses_match_brute_force_on_mixed_batches(size: int, seed: int, candidates: str) -> None:
    logits, partition, factual, emotional = tied_batch(size, seed)
    weights = PaclLossWeights(strong=1.0, partial_emotional=0.5, partial_factual=0.25, weak=2.0)
    total, per_partition = partitioned_loss_from_logits(logits, partition, factual, emotional,
                                                        weights=weights, candidates=candidates)
    expected_total = 0.0
    for part in ALL_PARTITIONS:
        expected = brute_loss(logits, partition.tolist(), factual.tolist(), emotional.tolist(), part,
                              candidates).item()
        assert per_partition[part.key].item() == pytest.approx(expected, abs=1e-9), part.key
        expected_total += weights.of(part) * expected
    assert total.item() == pytest.approx(expected_total, abs=1e-9)


@pytest.mark.parametrize("candidates", MODES)
@pytest.mark.parametrize("part", ALL_PARTITIONS)
@pytest.mark.parametrize("seed", range(6))
def test_partition_pure_batches_match_brute_force(part: Partition, seed: int, candidates: str) -> None:
    """Partition-pure batches of real cosines, where both readings of the candidates coincide."""
    images, texts = random_embeddings(10, 4, seed=seed)
    generator = torch.Generator().manual_seed(100 + seed)
    partition = torch.full((10,), int(part))
    factual = torch.randint(0, 2, (10,), generator=generator)
    emotional = torch.randint(0, 3, (10,), generator=generator)
    _, per_partition = pacl_loss(images.double(), texts.double(), partition, factual, emotional,
                                 candidates=candidates)
    logits = (images.double() @ texts.double().T) / 0.07
    expected = brute_loss(logits, partition.tolist(), factual.tolist(), emotional.tolist(), part, candidates)
    assert per_partition[part.key].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)  # float32 loss


def test_weak_loss_never_counts_the_own_pair_as_a_negative() -> None:
    """Eq. 14 by hand: v_0's best text is t_1, and t_0 lies outside both m_e(v_0) = {t_1} and
    m_f^-1(v_0) = {t_1}, yet p^-(v_0) = {j | j != 0, ...} = {t_2} leaves it out."""
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    weak = torch.full((3,), int(WEAK))
    factual = torch.tensor([0, 1, 1])
    emotional = torch.tensor([0, 1, 0])
    masks = contrastive_masks(WEAK, build_partner_masks(logits, factual, emotional))
    assert mask_to_sets(masks.image_positives)[0] == {1}
    assert mask_to_sets(masks.image_negatives)[0] == {2}
    only_anchor_0 = torch.tensor([True, False, False])
    value = one_direction_loss(logits, masks.image_positives, masks.image_negatives, only_anchor_0)
    assert value.item() == pytest.approx(-math.log(math.exp(3.0) / (math.exp(3.0) + math.exp(0.0))), abs=1e-12)
    _, per_partition = partitioned_loss_from_logits(logits, weak, factual, emotional, active=(WEAK,))
    expected = brute_loss(logits, weak.tolist(), factual.tolist(), emotional.tolist(), WEAK, "partition")
    assert per_partition["weak"].item() == pytest.approx(expected.item(), abs=1e-12)


def test_partition_and_batch_candidates_differ_on_mixed_batches() -> None:
    logits, partition, factual, emotional = tied_batch(16, seed=3)
    by_partition, _ = partitioned_loss_from_logits(logits, partition, factual, emotional)
    by_batch, _ = partitioned_loss_from_logits(logits, partition, factual, emotional, candidates="batch")
    assert abs(by_partition.item() - by_batch.item()) > 0.1


@pytest.mark.parametrize("candidates", MODES)
@pytest.mark.parametrize("present", [(0,), (3,), (1, 2), (0, 3)])
def test_empty_partitions_give_zero_and_finite_gradients(present: tuple[int, ...], candidates: str) -> None:
    images, texts = random_embeddings(8, 6, seed=7)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    partition = torch.tensor([present[i % len(present)] for i in range(8)])
    clusters = torch.tensor([0, 0, 1, 1] * 2)  # both clusters inside every partition's sub-batch
    total, per_partition = pacl_loss(images, texts, partition, clusters, clusters.flip(0), candidates=candidates)
    for part in ALL_PARTITIONS:
        value = per_partition[part.key]
        assert torch.isfinite(value)
        assert (value == 0) == (part not in present), part.key
    total.backward()
    for grad in (images.grad, texts.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_inactive_partitions_are_absent_and_do_not_count() -> None:
    images, texts = random_embeddings(6, 4, seed=8)
    partition = torch.tensor([0, 1, 2, 3, 0, 3])
    clusters = torch.tensor([0, 1, 0, 1, 0, 1])
    weights = LOSS_WEIGHT_PRESETS["public_code"]
    total, per_partition = pacl_loss(images, texts, partition, clusters, clusters, active=active_losses(1, 3),
                                     weights=weights)
    assert set(per_partition) == {"strong", "partial_emotional", "partial_factual"}
    partial = per_partition["partial_emotional"] + per_partition["partial_factual"]
    expected = per_partition["strong"] + 0.6 * partial
    torch.testing.assert_close(total.detach(), expected)


def test_loss_weight_presets() -> None:
    assert PaclLossWeights().in_partition_order() == (1.0, 1.0, 1.0, 1.0)
    assert LOSS_WEIGHT_PRESETS["paper"] == PaclLossWeights()
    assert LOSS_WEIGHT_PRESETS["public_code"].in_partition_order() == (1.0, 0.6, 0.6, 0.1)


@pytest.mark.parametrize("candidates", MODES)
def test_gradients_match_the_brute_force_construction(candidates: str) -> None:
    """Gradients flow through the logits only; the sets come from detached values."""
    images, texts = random_embeddings(9, 5, seed=9)
    images, texts = images.double(), texts.double()
    partition = torch.tensor([3, 3, 1, 2, 3, 1, 2, 0, 0])
    factual = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 0])
    emotional = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0, 1])
    weights = PaclLossWeights(1.0, 0.7, 0.4, 1.3)
    leaf = images.clone().requires_grad_(True)
    total, _ = pacl_loss(leaf, texts, partition, factual, emotional, weights=weights, candidates=candidates)
    (grad_model,) = torch.autograd.grad(total, leaf)

    leaf = images.clone().requires_grad_(True)
    logits = (leaf @ texts.T) / 0.07
    manual = sum(weights.of(part) * brute_loss(logits, partition.tolist(), factual.tolist(),
                                               emotional.tolist(), part, candidates)
                 for part in ALL_PARTITIONS)
    (grad_manual,) = torch.autograd.grad(manual, leaf)
    torch.testing.assert_close(grad_model, grad_manual, rtol=1e-4, atol=1e-5)  # the loss runs in float32


# ---------------------------------------------------------------- validation
def test_bad_inputs_raise_clear_errors() -> None:
    images, texts = random_embeddings(4, 3, seed=1)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        pacl_loss(images, texts[:3], labels, labels, labels)
    with pytest.raises(ValueError, match="partition ids"):
        pacl_loss(images, texts, torch.tensor([0, 1, 2, 4]), labels, labels)
    with pytest.raises(ValueError, match="factual_cluster"):
        pacl_loss(images, texts, labels, labels.float(), labels)
    with pytest.raises(ValueError, match="active"):
        pacl_loss(images, texts, labels, labels, labels, active=())
    with pytest.raises(ValueError, match=r"PaclLossWeights.weak"):
        PaclLossWeights(weak=-0.1)


# ---------------------------------------------------------------- schedule
L1 = (STRONG,)
L123 = (STRONG, PARTIAL_EMOTIONAL, PARTIAL_FACTUAL)
L1234 = ALL_PARTITIONS


@pytest.mark.parametrize(
    ("total_epochs", "expected"),
    [
        (30, [L1] * 10 + [L123] * 10 + [L1234] * 10),
        (10, [L1] * 4 + [L123] * 3 + [L1234] * 3),
        (4, [L1] * 2 + [L123] + [L1234]),
        (1, [L1]),
    ],
)
def test_schedule_switches_by_thirds_of_pretraining_epochs(total_epochs: int, expected: list) -> None:
    assert [active_losses(epoch, total_epochs) for epoch in range(total_epochs)] == expected


@pytest.mark.parametrize(("epoch", "total_epochs"), [(-1, 10), (10, 10), (0, 0), (1.0, 10)])
def test_schedule_rejects_out_of_range_arguments(epoch: int, total_epochs: int) -> None:
    with pytest.raises(ValueError, match="epoch"):
        active_losses(epoch, total_epochs)


# ---------------------------------------------------------------- multi-process gather
def test_gather_is_identity_without_process_group() -> None:
    tensor = torch.arange(3)
    assert gather_with_local_grad(tensor)[0] is tensor


@pytest.mark.parametrize("candidates", MODES)
def test_gather_under_gloo_reproduces_the_single_process_loss_and_local_gradients(tmp_path: Path,
                                                                                  candidates: str) -> None:
    images, texts = random_embeddings(8, 5, seed=11)
    batch = {
        "images": images, "texts": texts,
        "partition": torch.tensor([0, 1, 2, 3, 3, 0, 1, 2]),
        "factual": torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]),
        "emotional": torch.tensor([1, 1, 0, 0, 1, 0, 1, 0]),
    }
    torch.save(batch, tmp_path / "batch.pt")
    images.requires_grad_(True)
    total, _ = pacl_loss(images, texts, batch["partition"], batch["factual"], batch["emotional"],
                         candidates=candidates)
    total.backward()

    worker = Path(__file__).with_name("_pacl_gather_worker.py")
    ranks = [subprocess.Popen([sys.executable, str(worker), str(rank), "2", str(tmp_path), candidates])
             for rank in range(2)]
    assert [process.wait(timeout=120) for process in ranks] == [0, 0]
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["gathered"], images.detach())
        torch.testing.assert_close(result["total"], total.detach())
        torch.testing.assert_close(result["grad"], images.grad[4 * rank: 4 * rank + 4])
