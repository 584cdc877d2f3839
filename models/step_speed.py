"""How a training step uses its device: settings that change speed, not what is learnt.

On a CUDA device, by default:

- TF32 for the float32 matmuls and convolutions that bf16 autocast leaves (losses, heads);
- channels_last (NHWC) memory for convolutional networks, which cuDNN's tensor-core kernels
  want; transformers keep their layout;
- fused AdamW / SGD: one kernel for the whole update instead of a loop over tensors.

`compile` adds `torch.compile` of the training module (off by default: the first steps pay for
compilation, which long runs win back). On a CPU everything defaults off, so CPU results are
what they were; the tests switch each setting on on a CPU and check the numbers agree within
float tolerance. None of this enters a stage's fingerprint, like the device itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class StepSpeed:
    """None means: on for CUDA (channels_last only for convolutional networks), off on CPU."""

    channels_last: bool | None = None
    fused_optimizer: bool | None = None
    compile: bool = False
    compile_backend: str = "inductor"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> StepSpeed:
        return cls(**(values or {}))


DEFAULT_SPEED = StepSpeed()


def is_convolutional(module: nn.Module) -> bool:
    """More than one 2-d convolution: a CNN (a ViT has just its patch embedding)."""
    return sum(isinstance(layer, nn.Conv2d) for layer in module.modules()) > 1


class FastStep:
    """`StepSpeed` resolved for one model on one device; applies it to the model, its inputs,
    its optimiser and the module the loop calls."""

    def __init__(self, speed: StepSpeed, device: torch.device, model: nn.Module) -> None:
        cuda = device.type == "cuda"
        self.speed = speed
        self.channels_last = (speed.channels_last if speed.channels_last is not None
                              else cuda and is_convolutional(model))
        self.fused = speed.fused_optimizer if speed.fused_optimizer is not None else cuda
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    def inputs(self, pixels: Tensor) -> Tensor:
        """Images in the model's memory format."""
        return pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels

    def optimizer_options(self) -> dict[str, Any]:
        """Keywords for AdamW / SGD (`fused`)."""
        return {"fused": True} if self.fused else {}

    def compiled(self, module: nn.Module) -> nn.Module:
        """The module the training loop calls (its parameters are the model's own)."""
        if not self.speed.compile:
            return module
        return torch.compile(module, backend=self.speed.compile_backend)  # type: ignore[return-value]
