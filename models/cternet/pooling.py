"""WSCNet cross-spatial (class-wise) pooling: detection logits and the sentiment map from attention."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ClassWisePooling(nn.Module):
    """1x1 conv to `num_classes * k_maps` maps, then plain reshape/mean pooling.

    Each class owns k consecutive maps; their mean is the class map, whose spatial mean is the
    class's detection logit (mean over k then GAP equals GAP then mean over k). The sentiment
    map is the mean over classes of the class maps weighted by the softmax class scores, so
    regions that speak for the likely classes dominate it.
    """

    def __init__(self, in_channels: int, num_classes: int, k_maps: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.k_maps = k_maps
        self.to_class_maps = nn.Conv2d(in_channels, num_classes * k_maps, kernel_size=1)

    def forward(self, attention: Tensor) -> tuple[Tensor, Tensor]:
        """(B, A, H, W) attention -> (detection logits (B, C), sentiment map (B, 1, H, W))."""
        maps = self.to_class_maps(attention)
        batch, _, height, width = maps.shape
        class_maps = maps.reshape(batch, self.num_classes, self.k_maps, height, width).mean(dim=2)
        detection_logits = class_maps.mean(dim=(2, 3))
        scores = F.softmax(detection_logits, dim=1)
        sentiment_map = (scores[:, :, None, None] * class_maps).mean(dim=1, keepdim=True)
        return detection_logits, sentiment_map
