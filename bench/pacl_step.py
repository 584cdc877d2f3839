"""One PACL training step (timm resnet50 at 224): samples/s and the share spent in masks + losses.

`measure_step` is also the PACL row of `python -m bench.gpu` (other encoders, the paper's batch).

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
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from affectflow.models.pacl.losses import ALL_PARTITIONS, CANDIDATE_MODES, DEFAULT_CANDIDATES, pacl_loss
from affectflow.models.pacl.model import build_pacl_model
from affectflow.models.pacl.schedule import build_optimizer
from affectflow.models.pacl.train import training_autocast
from affectflow.models.step_speed import DEFAULT_SPEED, FastStep
from bench.common import BenchRow, peak_rss_mib, synchronize

VISUAL_SPEC = "timm:resnet50"
TEXT_DIM = 1024  # SKEP roberta-large features, as in the paper's text tower
IMAGE_SIZE = 224
CLUSTERS = 2


@dataclass(frozen=True)
class StepTiming:
    """Seconds per step and per masks+losses, and the floating-point work of one step."""

    batch: int
    step_seconds: float
    loss_seconds: float
    flops: float

    @property
    def samples_per_second(self) -> float:
        return self.batch / self.step_seconds


def measure_step(visual_spec: str, batch: int, image_size: int, device: torch.device,
                 timed_steps: int, modes: tuple[str, ...] = (DEFAULT_CANDIDATES,)
                 ) -> dict[str, StepTiming]:
    """One PACL training step as the trainer runs it (bf16 autocast and the GPU step settings
    on CUDA, AdamW), on random device tensors, per reading of the loss candidates in `modes`;
    the masks + losses get their own clock."""
    model, _ = build_pacl_model(visual_spec, text_dim=TEXT_DIM, pretrained=False)
    model.to(device).train()
    fast = FastStep(DEFAULT_SPEED, device, model)
    optimizer = build_optimizer(model, 1e-3, 1e-3, 0.01, **fast.optimizer_options())
    generator = torch.Generator().manual_seed(0)
    images = fast.inputs(torch.randn(batch, 3, image_size, image_size, generator=generator).to(device))
    text_features = torch.randn(batch, TEXT_DIM, generator=generator).to(device)
    partition = torch.randint(0, len(ALL_PARTITIONS), (batch,), generator=generator).to(device)
    factual = torch.randint(0, CLUSTERS, (batch,), generator=generator).to(device)
    emotional = torch.randint(0, CLUSTERS, (batch,), generator=generator).to(device)

    def step(candidates: str) -> tuple[float, float]:
        synchronize(device)
        start = time.perf_counter()
        with training_autocast(device):
            image_embeddings, text_embeddings = model(images, text_features)
        image_leaf = image_embeddings.detach().requires_grad_(True)
        text_leaf = text_embeddings.detach().requires_grad_(True)
        synchronize(device)
        loss_start = time.perf_counter()
        total, _ = pacl_loss(image_leaf, text_leaf, partition, factual, emotional, active=ALL_PARTITIONS,
                             candidates=candidates)
        total.backward()
        synchronize(device)
        loss_seconds = time.perf_counter() - loss_start
        torch.autograd.backward([image_embeddings, text_embeddings], [image_leaf.grad, text_leaf.grad])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start, loss_seconds

    with FlopCounterMode(display=False) as counter:
        step(DEFAULT_CANDIDATES)  # warm-up too: allocator, kernels, AdamW state
    measured: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for _ in range(timed_steps):
        for mode in modes:  # alternating, so every reading sees the same machine load
            measured[mode].append(step(mode))
    flops = float(counter.get_total_flops())
    return {mode: StepTiming(batch, sum(s for s, _ in steps) / timed_steps,
                             sum(s for _, s in steps) / timed_steps, flops)
            for mode, steps in measured.items()}


def run(quick: bool) -> list[BenchRow]:
    batch, timed_steps = (32, 2) if quick else (128, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timings = measure_step(VISUAL_SPEC, batch, IMAGE_SIZE, device, timed_steps, CANDIDATE_MODES)
    setting = f"{VISUAL_SPEC} {IMAGE_SIZE}px batch {batch} on {device.type}, {timed_steps} timed steps"
    default = timings[DEFAULT_CANDIDATES]
    rows = [BenchRow(
        "PACL train step samples/s",
        default.samples_per_second,
        0.0,
        detail=f"{setting}, candidates {DEFAULT_CANDIDATES}; throughput is reported, not gated "
               "(shared machines vary)",
        extra={"step_seconds": default.step_seconds, "peak_rss_mib": peak_rss_mib()},
    )]
    for mode, timing in timings.items():
        rows.append(BenchRow(
            f"PACL masks+losses share of step (candidates {mode})",
            timing.loss_seconds / timing.step_seconds,
            0.05,
            higher_is_better=False,
            detail=f"{setting}; masks+losses {1000 * timing.loss_seconds:.1f} ms/step "
                   f"of {timing.step_seconds:.2f} s/step",
            extra={"loss_seconds": timing.loss_seconds},
        ))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.pacl_step", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 32 and 2 timed steps instead of 128 and 3")
    for row in run(quick=parser.parse_args().quick):
        verdict = "pass" if row.passed else "FAIL"
        print(f"{row.name}: {row.value:.4f} (target {'>=' if row.higher_is_better else '<='} {row.target}) "
              f"{verdict} — {row.detail}")
