"""CTERNet training-step speed at 448 px on CPU (res2net101d, batch 2) and the head's share of it.

`measure_step` is also the CTERNet row of `python -m bench.gpu` (batch 16 on a GPU).

The step is split at the backbone's output: the backbone runs forward, the head (SMAD-F,
SMAD-C, class-wise pooling, classifier, losses) runs forward and backward on a detached copy
of the feature map, then the feature-map gradient is pushed back through the backbone. The
work is the same as one joint backward, but each part gets its own clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.model import CTERNet, build_cternet
from affectflow.models.step_speed import DEFAULT_SPEED, FastStep
from bench.common import BenchRow, peak_rss_mib, synchronize

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


@dataclass(frozen=True)
class StepTiming:
    """The fastest of the timed steps and the floating-point work of one step."""

    batch: int
    best: StepTimes
    flops: float

    @property
    def samples_per_second(self) -> float:
        return self.batch / self.best.total

    @property
    def head_share(self) -> float:
        return self.best.head / (self.best.backbone + self.best.head)


def _training_step(model: CTERNet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   labels: torch.Tensor, device: torch.device) -> StepTimes:
    synchronize(device)
    start = time.perf_counter()
    features = model.backbone(images)
    synchronize(device)
    backbone_forward_end = time.perf_counter()
    detached = features.detach().requires_grad_()
    model.head.loss(model.head(detached), labels).backward()
    synchronize(device)
    head_end = time.perf_counter()
    features.backward(detached.grad)
    synchronize(device)
    backbone_backward_end = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    end = time.perf_counter()
    return StepTimes(
        backbone=(backbone_forward_end - start) + (backbone_backward_end - head_end),
        head=head_end - backbone_forward_end,
        optimizer=end - backbone_backward_end,
    )


def measure_step(backbone: str, input_size: int, batch: int, device: torch.device,
                 timed_steps: int) -> StepTiming:
    """A CTERNet training step (full mode, SGD with the GPU step settings on CUDA) on random
    device tensors: one counted warm-up step, then the fastest of `timed_steps`."""
    torch.manual_seed(0)
    config = CTERNetConfig(backbone=backbone, pretrained=False, input_size=input_size)
    model = build_cternet(config, device=device).train()
    fast = FastStep(DEFAULT_SPEED, device, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, **fast.optimizer_options())
    images = fast.inputs(torch.randn(batch, 3, input_size, input_size, device=device))
    labels = torch.arange(batch, device=device) % config.num_classes
    with FlopCounterMode(display=False) as counter:
        _training_step(model, optimizer, images, labels, device)
    steps = [_training_step(model, optimizer, images, labels, device) for _ in range(timed_steps)]
    return StepTiming(batch, min(steps, key=lambda step: step.total), float(counter.get_total_flops()))


def run(quick: bool) -> list[BenchRow]:
    """Time one warm-up plus 1 (quick) or 3 training steps; report the fastest step."""
    timing = measure_step("res2net101d", INPUT_SIZE, BATCH_SIZE, torch.device("cpu"), 1 if quick else 3)
    best = timing.best
    seconds = {"backbone_s": best.backbone, "head_s": best.head, "optimizer_s": best.optimizer}
    return [
        BenchRow(
            name="cternet_train_images_per_s_cpu_448",
            value=timing.samples_per_second,
            target=CPU_IMAGES_PER_SECOND_TARGET,
            detail=f"res2net101d, batch {BATCH_SIZE}, full mode, SGD step, best of "
                   f"{1 if quick else 3} on {torch.get_num_threads()} threads",
            extra={"step_s": best.total, "peak_rss_mib": peak_rss_mib()},
        ),
        BenchRow(
            name="cternet_head_share_of_step",
            value=timing.head_share,
            target=HEAD_SHARE_TARGET,
            higher_is_better=False,
            detail="head forward+backward / (backbone + head forward+backward); optimizer step excluded",
            extra=seconds,
        ),
    ]


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
