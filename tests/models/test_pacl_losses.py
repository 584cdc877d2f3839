"""PACL losses checked against open_clip's ClipLoss and against brute-force loops over the equations."""

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
    PaclLossWeights,
    Partition,
    active_losses,
    build_partner_masks,
    contrastive_masks,
    gather_with_local_grad,
    pacl_loss,
    partitioned_loss_from_logits,
)

torch.set_num_threads(1)

STRONG, PARTIAL_EMOTIONAL, PARTIAL_FACTUAL, WEAK = ALL_PARTITIONS


# ---------------------------------------------------------------- brute force, straight from the equations
def brute_best(sim: list[list[float]]) -> tuple[list[int], list[int]]:
    """best_text[i] and best_image[j], ties to the lowest index."""
    size = len(sim)
    best_text = []
    for i in range(size):
        top = max(sim[i][j] for j in range(size))
        best_text.append(min(j for j in range(size) if sim[i][j] == top))
    best_image = []
    for j in range(size):
        top = max(sim[i][j] for i in range(size))
        best_image.append(min(i for i in range(size) if sim[i][j] == top))
    return best_text, best_image


def brute_sets(sim: list[list[float]], factual: list[int], emotional: list[int]) -> dict[str, list[set[int]]]:
    size = len(sim)
    best_text, best_image = brute_best(sim)
    m_f = [{k for k in range(size) if factual[k] == factual[best_image[j]]} for j in range(size)]
    m_f_inv = [{j for j in range(size) if i in m_f[j]} for i in range(size)]
    m_e = [{k for k in range(size) if emotional[k] == emotional[best_text[i]]} for i in range(size)]
    m_e_inv = [{i for i in range(size) if j in m_e[i]} for j in range(size)]
    return {"m_f": m_f, "m_f_inv": m_f_inv, "m_e": m_e, "m_e_inv": m_e_inv,
            "best_text": best_text, "best_image": best_image}


def brute_positives_and_exclusions(part: Partition, sets: dict, anchor: int) -> tuple[set, set, set, set]:
    """(image positives, image exclusions, text positives, text exclusions) of one anchor index."""
    if part is STRONG:
        return {anchor}, set(), {anchor}, set()
    if part is PARTIAL_EMOTIONAL:
        return {anchor}, sets["m_f_inv"][anchor], {anchor}, sets["m_f"][anchor]
    if part is PARTIAL_FACTUAL:
        return {anchor}, sets["m_e"][anchor], {anchor}, sets["m_e_inv"][anchor]
    return (
        {sets["best_text"][anchor]},
        sets["m_e"][anchor] | sets["m_f_inv"][anchor],
        {sets["best_image"][anchor]},
        sets["m_f"][anchor] | sets["m_e_inv"][anchor],
    )


def brute_anchor_term(row: list[float], positives: set[int], excluded: set[int]) -> float:
    candidates = positives | (set(range(len(row))) - excluded)
    numerator = sum(math.exp(row[p]) for p in positives)
    denominator = sum(math.exp(row[j]) for j in candidates)
    return -math.log(numerator / denominator)


def brute_loss(logits: list[list[float]], partition: list[int], factual: list[int], emotional: list[int],
               part: Partition) -> float:
    size = len(logits)
    sets = brute_sets(logits, factual, emotional)
    image_terms, text_terms = [], []
    for anchor in range(size):
        if partition[anchor] != part:
            continue
        image_pos, image_excl, text_pos, text_excl = brute_positives_and_exclusions(part, sets, anchor)
        image_terms.append(brute_anchor_term(logits[anchor], image_pos, image_excl))
        text_row = [logits[i][anchor] for i in range(size)]
        text_terms.append(brute_anchor_term(text_row, text_pos, text_excl))
    if not image_terms:
        return 0.0
    return 0.5 * (sum(image_terms) / len(image_terms) + sum(text_terms) / len(text_terms))


def mask_to_sets(mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask]


# ---------------------------------------------------------------- batches
def tied_batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits on a coarse grid (many exact ties) and random labels with 2-3 clusters."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randint(-3, 4, (size, size), generator=generator).double() / 2
    partition = torch.randint(0, 4, (size,), generator=generator)
    factual = torch.randint(0, 2, (size,), generator=generator)
    emotional = torch.randint(0, 3, (size,), generator=generator)
    return logits, partition, factual, emotional


def random_embeddings(size: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    return images, texts


BATCHES = [(size, seed) for size in (1, 2, 5, 9) for seed in range(3)]


# ---------------------------------------------------------------- L1 == CLIP
def test_strong_loss_equals_open_clip_clip_loss() -> None:
    images, texts = random_embeddings(16, 8, seed=0)
    labels = torch.zeros(16, dtype=torch.long)
    logit_scale = 1.0 / 0.07
    total, per_partition = pacl_loss(images, texts, labels, labels, labels, active=(STRONG,), logit_scale=logit_scale)
    expected = ClipLoss()(images, texts, torch.tensor(logit_scale))
    torch.testing.assert_close(per_partition["strong"], expected)
    torch.testing.assert_close(total, expected)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize(("size", "seed"), BATCHES)
def test_partner_masks_match_brute_force(size: int, seed: int) -> None:
    logits, _, factual, emotional = tied_batch(size, seed)
    partners = build_partner_masks(logits, factual, emotional)
    expected = brute_sets(logits.tolist(), factual.tolist(), emotional.tolist())
    assert partners.best_text.tolist() == expected["best_text"]
    assert partners.best_image.tolist() == expected["best_image"]
    for name in ("m_f", "m_f_inv", "m_e", "m_e_inv"):
        assert mask_to_sets(getattr(partners, name)) == expected[name], name


def test_argmax_ties_go_to_lowest_index() -> None:
    logits = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    partners = build_partner_masks(logits, labels, labels)
    assert partners.best_text.tolist() == [1, 0, 0]
    assert partners.best_image.tolist() == [2, 0, 0]


@pytest.mark.parametrize("part", ALL_PARTITIONS)
@pytest.mark.parametrize(("size", "seed"), BATCHES)
def test_positive_and_excluded_sets_match_brute_force(part: Partition, size: int, seed: int) -> None:
    logits, _, factual, emotional = tied_batch(size, seed)
    masks = contrastive_masks(part, build_partner_masks(logits, factual, emotional))
    sets = brute_sets(logits.tolist(), factual.tolist(), emotional.tolist())
    for anchor in range(size):
        image_pos, image_excl, text_pos, text_excl = brute_positives_and_exclusions(part, sets, anchor)
        assert mask_to_sets(masks.image_positives)[anchor] == image_pos
        assert mask_to_sets(masks.image_excluded)[anchor] == image_excl
        assert mask_to_sets(masks.text_positives)[anchor] == text_pos
        assert mask_to_sets(masks.text_excluded)[anchor] == text_excl


# ---------------------------------------------------------------- loss values
@pytest.mark.parametrize(("size", "seed"), BATCHES)
def test_partition_losses_match_brute_force(size: int, seed: int) -> None:
    logits, partition, factual, emotional = tied_batch(size, seed)
    weights = PaclLossWeights(strong=1.0, partial_emotional=0.5, partial_factual=0.25, weak=2.0)
    total, per_partition = partitioned_loss_from_logits(logits, partition, factual, emotional, weights=weights)
    expected_total = 0.0
    for part in ALL_PARTITIONS:
        expected = brute_loss(logits.tolist(), partition.tolist(), factual.tolist(), emotional.tolist(), part)
        assert per_partition[part.key].item() == pytest.approx(expected, abs=1e-9), part.key
        expected_total += weights.of(part) * expected
    assert total.item() == pytest.approx(expected_total, abs=1e-9)


def test_single_sample_partitions_keep_an_excluded_own_pair_as_positive() -> None:
    """One anchor per partition; for L2, L3 and L4 the own pair falls into the anchor's excluded set."""
    logits = torch.tensor([[3.0, 0.0, 1.0, 0.5], [2.5, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0], [1.0, 2.0, 0.0, 0.5]])
    partition = torch.tensor([1, 0, 2, 3])
    factual = torch.tensor([0, 0, 1, 1])
    emotional = torch.tensor([1, 0, 1, 0])
    partners = build_partner_masks(logits, factual, emotional)
    for anchor, part in ((0, PARTIAL_EMOTIONAL), (2, PARTIAL_FACTUAL), (3, WEAK)):
        masks = contrastive_masks(part, partners)
        assert masks.image_excluded[anchor, anchor] and masks.text_excluded[anchor, anchor]
    _, per_partition = partitioned_loss_from_logits(logits, partition, factual, emotional)
    own_pair_only = [logits[0, 0] - torch.logsumexp(logits[0], 0), logits[0, 0] - torch.logsumexp(logits[:, 0], 0)]
    assert per_partition["partial_emotional"].item() > 0
    assert per_partition["partial_emotional"].item() < -0.5 * sum(own_pair_only).item()
    for part in ALL_PARTITIONS:
        expected = brute_loss(logits.tolist(), partition.tolist(), factual.tolist(), emotional.tolist(), part)
        assert per_partition[part.key].item() == pytest.approx(expected, rel=1e-6), part.key


def test_embedding_path_matches_brute_force_on_scaled_cosines() -> None:
    images, texts = random_embeddings(12, 6, seed=4)
    generator = torch.Generator().manual_seed(5)
    partition = torch.randint(0, 4, (12,), generator=generator)
    factual = torch.randint(0, 2, (12,), generator=generator)
    emotional = torch.randint(0, 2, (12,), generator=generator)
    _, per_partition = pacl_loss(images, texts, partition, factual, emotional, logit_scale=1 / 0.07)
    logits = ((images.double() @ texts.double().T) / 0.07).tolist()
    for part in ALL_PARTITIONS:
        expected = brute_loss(logits, partition.tolist(), factual.tolist(), emotional.tolist(), part)
        assert per_partition[part.key].item() == pytest.approx(expected, rel=1e-4), part.key


@pytest.mark.parametrize("present", [(0,), (3,), (1, 2), (0, 3)])
def test_empty_partitions_give_zero_and_finite_gradients(present: tuple[int, ...]) -> None:
    images, texts = random_embeddings(8, 6, seed=7)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    partition = torch.tensor([present[i % len(present)] for i in range(8)])
    clusters = torch.tensor([0, 1] * 4)
    total, per_partition = pacl_loss(images, texts, partition, clusters, clusters.flip(0))
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
    total, per_partition = pacl_loss(images, texts, partition, clusters, clusters, active=active_losses(1, 3))
    assert set(per_partition) == {"strong", "partial_emotional", "partial_factual"}
    partial = per_partition["partial_emotional"] + per_partition["partial_factual"]
    expected = per_partition["strong"] + 0.6 * partial
    torch.testing.assert_close(total.detach(), expected)


def test_gradients_match_an_independent_implementation_with_detached_masks() -> None:
    """Gradients flow through the logits only; the masks come from a detached copy."""
    images, texts = random_embeddings(7, 5, seed=9)
    partition = torch.tensor([3, 3, 1, 2, 3, 1, 2])
    factual = torch.tensor([0, 1, 1, 0, 0, 1, 0])
    emotional = torch.tensor([1, 1, 0, 0, 1, 0, 1])
    images.requires_grad_(True)
    total, _ = pacl_loss(images, texts, partition, factual, emotional)
    (grad_model,) = torch.autograd.grad(total, images)

    leaf = images.detach().clone().requires_grad_(True)
    logits = (leaf @ texts.T) / 0.07
    partners = build_partner_masks(logits.detach(), factual, emotional)
    manual = torch.zeros(())
    for part in ALL_PARTITIONS:
        masks = contrastive_masks(part, partners)
        anchors = (partition == part).float()
        rows = []
        for direction, pos, excl in ((logits, masks.image_positives, masks.image_excluded),
                                     (logits.T, masks.text_positives, masks.text_excluded)):
            cand = pos | ~excl
            per_row = torch.logsumexp(direction.masked_fill(~cand, -torch.inf), 1) - torch.logsumexp(
                direction.masked_fill(~pos, -torch.inf), 1)
            rows.append((per_row * anchors).sum() / anchors.sum().clamp(min=1))
        manual = manual + PaclLossWeights().of(part) * 0.5 * (rows[0] + rows[1])
    (grad_manual,) = torch.autograd.grad(manual, leaf)
    torch.testing.assert_close(grad_model, grad_manual)


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


def test_gather_under_gloo_reproduces_the_single_process_loss_and_local_gradients(tmp_path: Path) -> None:
    images, texts = random_embeddings(8, 5, seed=11)
    batch = {
        "images": images, "texts": texts,
        "partition": torch.tensor([0, 1, 2, 3, 3, 0, 1, 2]),
        "factual": torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]),
        "emotional": torch.tensor([1, 1, 0, 0, 1, 0, 1, 0]),
    }
    torch.save(batch, tmp_path / "batch.pt")
    images.requires_grad_(True)
    total, _ = pacl_loss(images, texts, batch["partition"], batch["factual"], batch["emotional"])
    total.backward()

    worker = Path(__file__).with_name("_pacl_gather_worker.py")
    ranks = [subprocess.Popen([sys.executable, str(worker), str(rank), "2", str(tmp_path)]) for rank in range(2)]
    assert [process.wait(timeout=120) for process in ranks] == [0, 0]
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["gathered"], images.detach())
        torch.testing.assert_close(result["total"], total.detach())
        torch.testing.assert_close(result["grad"], images.grad[4 * rank: 4 * rank + 4])
