"""One PACL training step (timm resnet50 at 224): samples/s and the share spent in masks + losses.

The PACL losses add mask building (argmax, cluster comparisons) on top of the CLIP loss; this
checks that they stay a small part of a step (target <= 5%), for both readings of the
candidates (each partition's sub-batch, the default; the whole mixed batch), timed side by side
in alternating steps. The loss is timed on leaf copies of the embeddings (forward and backward),
then the encoder backward resumes from their gradients, so the step does exactly the work of an
ordinary training step.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from affectflow.models.pacl.losses import ALL_PARTITIONS, CANDIDATE_MODES, DEFAULT_CANDIDATES, pacl_loss
from affectflow.models.pacl.model import build_pacl_model
from bench.common import BenchRow, peak_rss_mib

VISUAL_SPEC = "timm:resnet50"
TEXT_DIM = 1024  # SKEP roberta-large features, as in the paper's text tower
IMAGE_SIZE = 224
CLUSTERS = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(quick: bool) -> list[BenchRow]:
    batch, timed_steps = (32, 2) if quick else (128, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = build_pacl_model(VISUAL_SPEC, text_dim=TEXT_DIM, pretrained=False)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)
    text_features = torch.randn(batch, TEXT_DIM, generator=generator).to(device)
    partition = torch.randint(0, len(ALL_PARTITIONS), (batch,), generator=generator).to(device)
    factual = torch.randint(0, CLUSTERS, (batch,), generator=generator).to(device)
    emotional = torch.randint(0, CLUSTERS, (batch,), generator=generator).to(device)

    def step(candidates: str) -> tuple[float, float]:
        _sync(device)
        start = time.perf_counter()
        with autocast:
            image_embeddings, text_embeddings = model(images, text_features)
        image_leaf = image_embeddings.detach().requires_grad_(True)
        text_leaf = text_embeddings.detach().requires_grad_(True)
        _sync(device)
        loss_start = time.perf_counter()
        total, _ = pacl_loss(image_leaf, text_leaf, partition, factual, emotional, active=ALL_PARTITIONS,
                             candidates=candidates)
        total.backward()
        _sync(device)
        loss_seconds = time.perf_counter() - loss_start
        torch.autograd.backward([image_embeddings, text_embeddings], [image_leaf.grad, text_leaf.grad])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start, loss_seconds

    step(DEFAULT_CANDIDATES)  # warm-up: allocator, kernels, AdamW state
    measured: dict[str, list[tuple[float, float]]] = {mode: [] for mode in CANDIDATE_MODES}
    for _ in range(timed_steps):
        for mode in CANDIDATE_MODES:  # alternating, so both see the same machine load
            measured[mode].append(step(mode))
    setting = f"{VISUAL_SPEC} {IMAGE_SIZE}px batch {batch} on {device.type}, {timed_steps} timed steps"
    default_seconds = sum(seconds for seconds, _ in measured[DEFAULT_CANDIDATES])
    rows = [BenchRow(
        "PACL train step samples/s",
        batch * timed_steps / default_seconds,
        0.0,
        detail=f"{setting}, candidates {DEFAULT_CANDIDATES}; throughput is reported, not gated "
               "(shared machines vary)",
        extra={"step_seconds": default_seconds / timed_steps, "peak_rss_mib": peak_rss_mib()},
    )]
    for mode, steps in measured.items():
        step_seconds = sum(seconds for seconds, _ in steps)
        loss_seconds = sum(seconds for _, seconds in steps)
        rows.append(BenchRow(
            f"PACL masks+losses share of step (candidates {mode})",
            loss_seconds / step_seconds,
            0.05,
            higher_is_better=False,
            detail=f"{setting}; masks+losses {1000 * loss_seconds / timed_steps:.1f} ms/step "
                   f"of {step_seconds / timed_steps:.2f} s/step",
            extra={"loss_seconds": loss_seconds / timed_steps},
        ))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.pacl_step", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 32 and 2 timed steps instead of 128 and 3")
    for row in run(quick=parser.parse_args().quick):
        verdict = "pass" if row.passed else "FAIL"
        print(f"{row.name}: {row.value:.4f} (target {'>=' if row.higher_is_better else '<='} {row.target}) "
              f"{verdict} — {row.detail}")
