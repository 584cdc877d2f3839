"""WSCNet cross-spatial (class-wise) pooling: detection scores and the sentiment map S from the
attention maps."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from affectflow.models.cternet.config import SentimentMap


class ClassWisePooling(nn.Module):
    """1x1 conv to `num_classes * k_maps` maps, then plain reshape/mean pooling.

    Each class c owns k consecutive maps; their mean is the class map M_c, whose spatial mean is
    the class's detection score v_c (mean over k then GAP equals GAP then mean over k). The
    sentiment map S combines the class maps weighted by the scores:

    - `raw_sum`: S = sum_c v_c M_c, the raw scores (the paper's Eq. 4);
    - `raw_mean`: S = (1/C) sum_c v_c M_c (the public code: class-wise pooling over classes);
    - `softmax_mean`: S = (1/C) sum_c softmax(v)_c M_c (affectflow before it followed Eq. 4).
    """

    def __init__(self, in_channels: int, num_classes: int, k_maps: int,
                 sentiment_map: SentimentMap) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.k_maps = k_maps
        self.sentiment_map = sentiment_map
        self.to_class_maps = nn.Conv2d(in_channels, num_classes * k_maps, kernel_size=1)

    def forward(self, attention: Tensor) -> tuple[Tensor, Tensor]:
        """(B, A, H, W) attention -> (detection scores (B, C), sentiment map (B, 1, H, W))."""
        maps = self.to_class_maps(attention)
        batch, _, height, width = maps.shape
        class_maps = maps.reshape(batch, self.num_classes, self.k_maps, height, width).mean(dim=2)
        detection_logits = class_maps.mean(dim=(2, 3))
        weights = (F.softmax(detection_logits, dim=1) if self.sentiment_map == "softmax_mean"
                   else detection_logits)
        weighted = (weights[:, :, None, None] * class_maps).sum(dim=1, keepdim=True)
        if self.sentiment_map == "raw_sum":
            return detection_logits, weighted
        return detection_logits, weighted / self.num_classes
