"""SMAD: the attention of CTERNet, factual (SMAD-F) and counterfactual (SMAD-C).

SMAD-F looks at the backbone map through several receptive fields (multi-scale branches as in
PSA) and lets channels attend to each other (the paper's Eq. 2). SMAD-C replaces the learned
attention by an intervention so that the model can measure what the learned attention itself
contributes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from affectflow.models.cternet.config import PSA_GROUPS, PSA_KERNELS, Branches, ChannelAttentionKind


class ChannelAttention(nn.Module):
    """Channel self-attention over flattened channels F (C, H*W): out = gamma * A F + F.

    `paper` (Eq. 2): A = softmax(F F^T), row-wise: a channel attends most to the channels it
    correlates with. `danet` (DANet's CAM, Fu et al. 2019): A = softmax(max(E) - E) with
    E = F F^T and the max taken per row, which turns the weighting around (the least similar
    channels weigh most) and keeps the exponent <= 0.

    `gamma` starts at 0 so the module is exactly the identity at init and the network learns
    how much channel mixing to add. The energy is computed in float32 because F F^T sums
    H*W products, and bf16's 8-bit mantissa would blur the softmax over those large values.
    """

    def __init__(self, kind: ChannelAttentionKind) -> None:
        super().__init__()
        self.kind = kind
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().reshape(batch, channels, height * width)
            energy = flat @ flat.transpose(1, 2)
            if self.kind == "danet":
                energy = energy.amax(dim=-1, keepdim=True) - energy
            attention = torch.softmax(energy, dim=-1)
            mixed = (attention @ flat).reshape(batch, channels, height, width)
            out = self.gamma * mixed + x.float()
        return out.to(x.dtype)


def multi_scale_branch(kind: Branches, in_channels: int, out_channels: int, kernel: int,
                       groups: int) -> nn.Module:
    """One SMAD-F branch: `psa` is a bias-free k x k convolution in `groups` groups (each output
    channel sees in_channels / groups input channels, as in PSA's split-and-concat);
    `conv_bn_relu` is an ungrouped k x k convolution followed by BatchNorm and ReLU."""
    if kind == "psa":
        if in_channels % groups:
            raise ValueError(
                f"branches: the backbone's {in_channels} channels cannot be split into the "
                f"{groups} groups of the {kernel}x{kernel} PSA branch; use branches: conv_bn_relu "
                "or a backbone whose channel count is a multiple of 16"
            )
        return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups,
                         bias=False)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FactualAttention(nn.Module):
    """SMAD-F: multi-scale branches (kernels 3/5/7/9) concatenated, channel attention, then a
    1x1 projection to non-negative attention maps.

    Every branch sees all input channels, as in PSA; the `psa` branches group them 1/4/8/16.
    The maps are ReLU outputs so that the counterfactual maps (ones, U(0, 2), reversed) live on
    the same scale.
    """

    def __init__(self, in_channels: int, branch_channels: int, attention_channels: int,
                 branches: Branches, channel_attention: ChannelAttentionKind) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            multi_scale_branch(branches, in_channels, branch_channels, kernel, groups)
            for kernel, groups in zip(PSA_KERNELS, PSA_GROUPS)
        )
        self.channel_attention = ChannelAttention(channel_attention)
        self.project = nn.Sequential(
            nn.Conv2d(branch_channels * len(PSA_KERNELS), attention_channels, 1, bias=False),
            nn.BatchNorm2d(attention_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: Tensor) -> Tensor:
        multi_scale = torch.cat([branch(features) for branch in self.branches], dim=1)
        return self.project(self.channel_attention(multi_scale))


def counterfactual_attention(attention: Tensor, strategy: str, training: bool) -> Tensor:
    """SMAD-C: an intervened attention of the same shape, detached from the learned one.

    `random` draws U(0, 2) maps while training and uses all-ones at evaluation (as in CAL), so
    that predictions are deterministic; `uniform` is all-ones; `reversed` is max - A + min per
    sample; `shuffled` gives each sample another sample's attention while training and falls
    back to all-ones at evaluation, where a prediction must not depend on its batch neighbours.
    """
    reference = attention.detach()
    if strategy == "uniform" or (strategy in ("random", "shuffled") and not training):
        return torch.ones_like(reference)
    if strategy == "random":
        return torch.empty_like(reference).uniform_(0.0, 2.0)
    if strategy == "reversed":
        flat = reference.flatten(1)
        shape = (-1,) + (1,) * (reference.ndim - 1)
        highest = flat.amax(dim=1).reshape(shape)
        lowest = flat.amin(dim=1).reshape(shape)
        return highest - reference + lowest
    if strategy == "shuffled":
        return reference[derangement(reference.shape[0], reference.device)]
    raise ValueError(
        f"counterfactual: unknown strategy {strategy!r}; use random, uniform, reversed or shuffled"
    )


def derangement(size: int, device: torch.device) -> Tensor:
    """A random permutation with no fixed point (a random cycle through a shuffled order)."""
    if size < 2:
        raise ValueError(
            "counterfactual: 'shuffled' needs a training batch of at least 2 samples; "
            "use a larger batch size or drop the last incomplete batch (drop_last=True)"
        )
    order = torch.randperm(size, device=device)
    permutation = torch.empty_like(order)
    permutation[order] = torch.roll(order, shifts=-1)
    return permutation

