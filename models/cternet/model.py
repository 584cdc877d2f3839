"""CTERNet: counterfactual emotion regulation network for image sentiment classification.

Data flow (`full` mode) on the backbone map X (B, Cb, H, W):

    A   = SMAD-F(X)                          learned attention maps (B, M, H, W)
    det, S = class-wise pooling(A)           detection logits, sentiment map (B, 1, H, W)
    P   = FC(GAP(concat(S, X)))              factual prediction (Eq. 5; head `features`), or
          FC(GAP(concat(S, S * reduce(X))))  with S * reduce(X) the attended feature (`attended`)
    A*  = SMAD-C(A)                          counterfactual attention, detached
    P*  = the same pooling and FC with A*    counterfactual prediction Y(S = s*)
    Y_TE = P - P*                            total effect (paper's sign: factual - counterfactual)
    loss = detection_weight * CE(det, y) + effect_weight * CE(Y_TE, y)

With the `features` head the FC is linear after GAP, so X's part of P and P* is the same and
cancels: Y_TE = w_S * (GAP(S) - GAP(S*)), one column of the FC times a scalar per image. The
`full` prediction then names argmax(w_S) or argmin(w_S) only, and no gradient reaches the FC's X
columns. That is Eq. 5 as written; the `attended` head (Fig. 2, public code) keeps X in Y_TE.

The prediction is Y_TE in `full` mode, at training and at inference: the loss only ever
supervises P through Y_TE, so P alone is not a calibrated classifier there, while Y_TE is the
quantity trained to classify. At inference the `random` counterfactual is all-ones, which
makes Y_TE deterministic. In `smad_f` and `vanilla` there is no counterfactual and the
prediction is P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affectflow.models.cternet.backbone import TimmBackbone, build_backbone
from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.pooling import ClassWisePooling
from affectflow.models.cternet.smad import FactualAttention, counterfactual_attention
from affectflow.models.encoder_runtime import resolve_device


@dataclass
class CTERNetOutput:
    """What one forward pass gives; fields of stages a mode does not have are None.

    `sentiment_map` (B, 1, H, W) is the factual S, meant for heat-map visualisation.
    """

    logits: Tensor
    factual_logits: Tensor
    counterfactual_logits: Tensor | None = None
    detection_logits: Tensor | None = None
    sentiment_map: Tensor | None = None
    attention: Tensor | None = None
    loss: Tensor | None = None


class CTERNetHead(nn.Module):
    """Everything after the backbone: SMAD-F, class-wise pooling, SMAD-C, classifier and loss."""

    def __init__(self, in_channels: int, config: CTERNetConfig) -> None:
        super().__init__()
        self.config = config
        if config.mode == "vanilla":
            self.classifier = nn.Linear(in_channels, config.num_classes)
            return
        self.factual_attention = FactualAttention(
            in_channels, config.branch_channels, config.attention_channels, config.branches,
            config.channel_attention,
        )
        self.pooling = ClassWisePooling(config.attention_channels, config.num_classes,
                                        config.k_maps, config.sentiment_map)
        if config.head == "features":
            self.classifier = nn.Linear(1 + in_channels, config.num_classes)
            return
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, config.attention_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(config.attention_channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(1 + config.attention_channels, config.num_classes)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> CTERNetOutput:
        if self.config.mode == "vanilla":
            logits = self.classifier(features.mean(dim=(2, 3)))
            output = CTERNetOutput(logits=logits, factual_logits=logits)
        else:
            output = self._attend(features)
        if labels is not None:
            output.loss = self.loss(output, labels)
        return output

    def _attend(self, features: Tensor) -> CTERNetOutput:
        attended = self.reduce(features) if self.config.head == "attended" else features
        attention = self.factual_attention(features)
        detection_logits, sentiment_map = self.pooling(attention)
        factual = self._classify(sentiment_map, attended)
        output = CTERNetOutput(
            logits=factual,
            factual_logits=factual,
            detection_logits=detection_logits,
            sentiment_map=sentiment_map,
            attention=attention,
        )
        if self.config.mode == "full":
            intervened = counterfactual_attention(attention, self.config.counterfactual, self.training)
            _, counterfactual_map = self.pooling(intervened)
            output.counterfactual_logits = self._classify(counterfactual_map, attended)
            output.logits = factual - output.counterfactual_logits
        return output

    def _classify(self, sentiment_map: Tensor, features: Tensor) -> Tensor:
        """The classifier shared by the factual and counterfactual paths: FC(GAP(concat(S, X)))
        for the `features` head, FC(GAP(concat(S, S * R))) with R = reduce(X) for `attended`."""
        second = features if self.config.head == "features" else sentiment_map * features
        return self.classifier(torch.cat([sentiment_map, second], dim=1).mean(dim=(2, 3)))

    def loss(self, output: CTERNetOutput, labels: Tensor) -> Tensor:
        """detection_weight * CE(det, y) + effect_weight * CE(prediction, y), in float32."""
        loss = self.config.effect_weight * F.cross_entropy(output.logits.float(), labels)
        if output.detection_logits is not None:
            detection = F.cross_entropy(output.detection_logits.float(), labels)
            loss = loss + self.config.detection_weight * detection
        return loss


class CTERNet(nn.Module):
    """Backbone + CTERNet head; `precision: bf16` runs the forward pass under bf16 autocast on
    whatever device the input is on (channel attention and the loss stay float32), `fp32` runs
    it in float32 even inside a caller's autocast (e.g. `inference_context` on CUDA)."""

    def __init__(self, backbone: TimmBackbone, config: CTERNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.head = CTERNetHead(backbone.out_channels, config)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> CTERNetOutput:
        """Classify (B, 3, input_size, input_size) images; with labels the loss is filled in."""
        expected = (self.config.input_size, self.config.input_size)
        if images.ndim != 4 or tuple(images.shape[-2:]) != expected:
            raise ValueError(
                f"input_size: the model is configured for {expected[0]}x{expected[1]} images, "
                f"got a tensor of shape {tuple(images.shape)}; resize the images or change input_size"
            )
        bf16 = self.config.precision == "bf16"
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bf16):
            output = self.head(self.backbone(images))
        if labels is not None:
            output.loss = self.head.loss(output, labels)
        return output


def build_cternet(config: CTERNetConfig, device: torch.device | str | None = None) -> CTERNet:
    """Build a CTERNet with backbone weights resolved as `config` asks, on `device` (default: GPU if any)."""
    target = resolve_device(device)
    backbone = build_backbone(config.backbone, config.pretrained, config.backbone_checkpoint)
    return CTERNet(backbone, config).to(target)
