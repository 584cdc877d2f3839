"""CTERNet training-step speed at 448 px on CPU (res2net101d, batch 2) and the head's share of it.

The step is split at the backbone's output: the backbone runs forward, the head (SMAD-F,
SMAD-C, class-wise pooling, classifier, losses) runs forward and backward on a detached copy
of the feature map, then the feature-map gradient is pushed back through the backbone. The
work is the same as one joint backward, but each part gets its own clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.model import CTERNet, build_cternet
from bench.common import BenchRow, peak_rss_mib

BATCH_SIZE = 2
INPUT_SIZE = 448
HEAD_SHARE_TARGET = 0.15
# A floor that flags a broken or pathologically slow CPU step, not a hardware claim.
CPU_IMAGES_PER_SECOND_TARGET = 0.2


@dataclass
class StepTimes:
    """Wall seconds of one training step, split by part."""

    backbone: float
    head: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.backbone + self.head + self.optimizer


def _training_step(
    model: CTERNet, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> StepTimes:
    start = time.perf_counter()
    features = model.backbone(images)
    backbone_forward_end = time.perf_counter()
    detached = features.detach().requires_grad_()
    model.head.loss(model.head(detached), labels).backward()
    head_end = time.perf_counter()
    features.backward(detached.grad)
    backbone_backward_end = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return StepTimes(
        backbone=(backbone_forward_end - start) + (backbone_backward_end - head_end),
        head=head_end - backbone_forward_end,
        optimizer=end - backbone_backward_end,
    )


def run(quick: bool) -> list[BenchRow]:
    """Time one warm-up plus 1 (quick) or 3 training steps; report the fastest step."""
    torch.manual_seed(0)
    config = CTERNetConfig(backbone="res2net101d", pretrained=False, input_size=INPUT_SIZE)
    model = build_cternet(config, device="cpu").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = torch.randn(BATCH_SIZE, 3, INPUT_SIZE, INPUT_SIZE)
    labels = torch.arange(BATCH_SIZE) % config.num_classes
    _training_step(model, optimizer, images, labels)
    steps = [_training_step(model, optimizer, images, labels) for _ in range(1 if quick else 3)]
    best = min(steps, key=lambda step: step.total)
    head_share = best.head / (best.backbone + best.head)
    seconds = {"backbone_s": best.backbone, "head_s": best.head, "optimizer_s": best.optimizer}
    return [
        BenchRow(
            name="cternet_train_images_per_s_cpu_448",
            value=BATCH_SIZE / best.total,
            target=CPU_IMAGES_PER_SECOND_TARGET,
            detail=f"res2net101d, batch {BATCH_SIZE}, full mode, SGD step, best of {len(steps)} "
            f"on {torch.get_num_threads()} threads",
            extra={"step_s": best.total, "peak_rss_mib": peak_rss_mib()},
        ),
        BenchRow(
            name="cternet_head_share_of_step",
            value=head_share,
            target=HEAD_SHARE_TARGET,
            higher_is_better=False,
            detail="head forward+backward / (backbone + head forward+backward); optimizer step excluded",
            extra=seconds,
        ),
    ]


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
