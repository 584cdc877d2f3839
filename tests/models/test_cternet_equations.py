"""Each CTERNet equation, and each named variant of it, against a direct computation written from
the formula: explicit loops and sums over plain Python lists in float64, sharing nothing with
the vectorised modules but their weights.

Notation: X the backbone map (C_in, H, W); F_i = branch i of SMAD-F (PSA kernels 3/5/7/9
with groups 1/4/8/16); channel attention (Eq. 2); class maps M_c and detection scores v_c
(class-wise pooling); sentiment map S (Eq. 4); prediction P = FC(GAP(concat(S, .))) (Eq. 5);
total effect Y_TE = P - P* (the paper's sign); loss = CE(v, y) + CE(Y_TE, y).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from affectflow.models.cternet.config import CTERNetConfig
from affectflow.models.cternet.model import CTERNetHead
from affectflow.models.cternet.pooling import ClassWisePooling
from affectflow.models.cternet.smad import ChannelAttention, FactualAttention

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Grid = list[list[list[float]]]  # (channels, height, width)
IN_CHANNELS = 16
BRANCH_CHANNELS = 16
ATTENTION_CHANNELS = 8
CLASSES = 3
K_MAPS = 2
SIDE = 3
BN_EPS = 1e-5
# The PSA design: (kernel, groups) per branch.
PSA_BRANCHES = ((3, 1), (5, 4), (7, 8), (9, 16))


def as_lists(tensor: torch.Tensor) -> Any:
    return tensor.detach().double().tolist()


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (eval mode), so no term is trivially 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.2)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return module.double().eval()


def conv(x: Grid, weight: Any, bias: list[float] | None, groups: int) -> Grid:
    """Zero-padded 'same' convolution, stride 1, from the definition:
    out[o, y, x] = b[o] + sum_{i in o's group} sum_{dy, dx} W[o, i, dy, dx] X[i, y + dy - p, x + dx - p]."""
    out_channels, per_group, kernel = len(weight), len(weight[0]), len(weight[0][0])
    height, width = len(x[0]), len(x[0][0])
    outputs_per_group = out_channels // groups
    pad = kernel // 2
    out = []
    for o in range(out_channels):
        first = (o // outputs_per_group) * per_group
        plane = []
        for y in range(height):
            row = []
            for column in range(width):
                total = 0.0 if bias is None else bias[o]
                for i in range(per_group):
                    for dy in range(kernel):
                        for dx in range(kernel):
                            yy, xx = y + dy - pad, column + dx - pad
                            if 0 <= yy < height and 0 <= xx < width:
                                total += weight[o][i][dy][dx] * x[first + i][yy][xx]
                row.append(total)
            plane.append(row)
        out.append(plane)
    return out


def batch_norm(x: Grid, bn: nn.BatchNorm2d) -> Grid:
    """Eval-mode BatchNorm: (x - running mean) / sqrt(running var + eps) * weight + bias."""
    mean, var = as_lists(bn.running_mean), as_lists(bn.running_var)
    scale, shift = as_lists(bn.weight), as_lists(bn.bias)
    return [[[(value - mean[c]) / math.sqrt(var[c] + BN_EPS) * scale[c] + shift[c] for value in row]
             for row in plane] for c, plane in enumerate(x)]


def relu(x: Grid) -> Grid:
    return [[[max(value, 0.0) for value in row] for row in plane] for plane in x]


def gap(plane: list[list[float]]) -> float:
    """Global average pooling of one (H, W) plane."""
    return sum(sum(row) for row in plane) / (len(plane) * len(plane[0]))


def channel_attention(x: Grid, gamma: float, kind: str) -> Grid:
    """Eq. 2 (`paper`): A_ij = exp(E_ij) / sum_j' exp(E_ij'), E_ij = sum_n F_in F_jn;
    `danet` replaces E_ij by max_j' E_ij' - E_ij. out_in = gamma * sum_j A_ij F_jn + F_in."""
    flat = [[value for row in plane for value in row] for plane in x]
    channels, positions = len(flat), len(flat[0])
    energy = [[sum(flat[i][n] * flat[j][n] for n in range(positions)) for j in range(channels)]
              for i in range(channels)]
    if kind == "danet":
        energy = [[max(row) - value for value in row] for row in energy]
    out_flat = []
    for i in range(channels):
        top = max(energy[i])  # subtracting the row max changes no softmax, avoids overflow
        weights = [math.exp(value - top) for value in energy[i]]
        total = sum(weights)
        out_flat.append([gamma * sum(weights[j] / total * flat[j][n] for j in range(channels))
                         + flat[i][n] for n in range(positions)])
    width = len(x[0][0])
    return [[row[start:start + width] for start in range(0, positions, width)] for row in out_flat]


def branch_reference(branch: nn.Module, x: Grid, kind: str, groups: int) -> Grid:
    if kind == "psa":
        return conv(x, as_lists(branch.weight), None, groups)
    convolution, bn, _ = branch
    return relu(batch_norm(conv(x, as_lists(convolution.weight), None, groups=1), bn))


def smad_f_reference(module: FactualAttention, x: Grid, kind: str, attention_kind: str) -> Grid:
    """The multi-scale branches concatenated, Eq. 2, then the 1x1 projection + BN + ReLU."""
    multi_scale = [plane for branch, (_, groups) in zip(module.branches, PSA_BRANCHES)
                   for plane in branch_reference(branch, x, kind, groups)]
    mixed = channel_attention(multi_scale, module.channel_attention.gamma.item(), attention_kind)
    projection, bn, _ = module.project
    return relu(batch_norm(conv(mixed, as_lists(projection.weight), None, groups=1), bn))


def pooling_reference(pooling: ClassWisePooling, attention: Grid,
                      variant: str) -> tuple[list[float], list[list[float]]]:
    """M_c = (1/k) sum_m (W_{ck+m} . A + b_{ck+m}); v_c = GAP(M_c); S per the variant:
    raw_sum sum_c v_c M_c (Eq. 4), raw_mean (1/C) sum_c v_c M_c, softmax_mean
    (1/C) sum_c softmax(v)_c M_c."""
    maps = conv(attention, as_lists(pooling.to_class_maps.weight),
                as_lists(pooling.to_class_maps.bias), groups=1)
    height, width = len(attention[0]), len(attention[0][0])
    class_maps = [[[sum(maps[c * K_MAPS + m][y][x] for m in range(K_MAPS)) / K_MAPS
                    for x in range(width)] for y in range(height)] for c in range(CLASSES)]
    scores = [gap(plane) for plane in class_maps]
    if variant == "softmax_mean":
        exponentials = [math.exp(value) for value in scores]
        weights = [value / sum(exponentials) for value in exponentials]
    else:
        weights = scores
    divisor = 1 if variant == "raw_sum" else CLASSES
    sentiment = [[sum(weights[c] * class_maps[c][y][x] for c in range(CLASSES)) / divisor
                  for x in range(width)] for y in range(height)]
    return scores, sentiment


def head_prediction(head: CTERNetHead, x: Grid, sentiment: list[list[float]]) -> list[float]:
    """Eq. 5: P_c = b_c + W_c0 GAP(S) + sum_j W_c(1+j) GAP(Z_j) with Z = X (`features`) or
    Z = S * ReLU(BN(conv1x1(X))) (`attended`)."""
    if head.config.head == "features":
        second = x
    else:
        convolution, bn, _ = head.reduce
        reduced = relu(batch_norm(conv(x, as_lists(convolution.weight), None, groups=1), bn))
        second = [[[s * r for s, r in zip(s_row, r_row)] for s_row, r_row in zip(sentiment, plane)]
                  for plane in reduced]
    pooled = [gap(sentiment)] + [gap(plane) for plane in second]
    weight, bias = as_lists(head.classifier.weight), as_lists(head.classifier.bias)
    return [bias[c] + sum(w * z for w, z in zip(weight[c], pooled)) for c in range(CLASSES)]


def head_config(**overrides: Any) -> CTERNetConfig:
    values: dict[str, Any] = dict(backbone="test_resnet", pretrained=False, input_size=64,
                                  num_classes=CLASSES, k_maps=K_MAPS,
                                  attention_channels=ATTENTION_CHANNELS,
                                  branch_channels=BRANCH_CHANNELS, counterfactual="uniform")
    return CTERNetConfig(**{**values, **overrides})


def random_grid(seed: int, channels: int = IN_CHANNELS, scale: float = 0.5) -> torch.Tensor:
    return torch.randn(1, channels, SIDE, SIDE, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * scale


@pytest.mark.parametrize("kind", ["psa", "conv_bn_relu"])
def test_multi_scale_branches(kind: str) -> None:
    module = randomise(FactualAttention(IN_CHANNELS, BRANCH_CHANNELS, ATTENTION_CHANNELS, kind,
                                        "paper"), seed=1)
    x = random_grid(2)
    for branch, (kernel, groups) in zip(module.branches, PSA_BRANCHES):
        convolution = branch if kind == "psa" else branch[0]
        expected_groups = groups if kind == "psa" else 1
        assert convolution.weight.shape == (BRANCH_CHANNELS, IN_CHANNELS // expected_groups,
                                            kernel, kernel)
        assert convolution.bias is None
        with torch.no_grad():
            actual = branch(x)[0]
        expected = branch_reference(branch, as_lists(x[0]), kind, groups)
        torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["paper", "danet"])
def test_channel_attention_eq2(kind: str) -> None:
    module = ChannelAttention(kind).double()
    with torch.no_grad():
        module.gamma.fill_(0.37)
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        actual = module(x)
    for sample in range(2):
        expected = channel_attention(as_lists(x[sample]), 0.37, kind)
        torch.testing.assert_close(actual[sample], torch.tensor(expected, dtype=torch.float64))


def test_the_two_channel_attentions_differ() -> None:
    x = torch.randn(1, 6, 2, 3, dtype=torch.float64)
    paper, danet = ChannelAttention("paper").double(), ChannelAttention("danet").double()
    with torch.no_grad():
        paper.gamma.fill_(1.0)
        danet.gamma.fill_(1.0)
        assert not torch.allclose(paper(x), danet(x))


@pytest.mark.parametrize("kind", ["psa", "conv_bn_relu"])
@pytest.mark.parametrize("attention_kind", ["paper", "danet"])
def test_smad_f_attention_maps(kind: str, attention_kind: str) -> None:
    module = randomise(FactualAttention(IN_CHANNELS, BRANCH_CHANNELS, ATTENTION_CHANNELS, kind,
                                        attention_kind), seed=3)
    with torch.no_grad():
        module.channel_attention.gamma.fill_(0.05)  # small: the energies of 64 maps are large
        x = random_grid(4, scale=0.2)
        actual = module(x)[0]
    expected = smad_f_reference(module, as_lists(x[0]), kind, attention_kind)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("variant", ["raw_sum", "raw_mean", "softmax_mean"])
def test_class_wise_pooling_and_sentiment_map_eq4(variant: str) -> None:
    pooling = randomise(ClassWisePooling(ATTENTION_CHANNELS, CLASSES, K_MAPS, variant), seed=5)
    attention = random_grid(6, channels=ATTENTION_CHANNELS).abs()
    with torch.no_grad():
        scores, sentiment = pooling(attention)
    expected_scores, expected_map = pooling_reference(pooling, as_lists(attention[0]), variant)
    torch.testing.assert_close(scores[0], torch.tensor(expected_scores, dtype=torch.float64))
    torch.testing.assert_close(sentiment[0, 0], torch.tensor(expected_map, dtype=torch.float64))


def test_eq4_uses_raw_scores_summed_not_averaged() -> None:
    """raw_sum is exactly C times raw_mean, and differs from the softmax-weighted mean."""
    maps = {variant: randomise(ClassWisePooling(ATTENTION_CHANNELS, CLASSES, K_MAPS, variant), 7)
            for variant in ("raw_sum", "raw_mean", "softmax_mean")}
    attention = random_grid(8, channels=ATTENTION_CHANNELS).abs()
    with torch.no_grad():
        sentiment = {variant: module(attention)[1] for variant, module in maps.items()}
    torch.testing.assert_close(sentiment["raw_sum"], CLASSES * sentiment["raw_mean"])
    assert not torch.allclose(sentiment["raw_sum"], CLASSES * sentiment["softmax_mean"])


@pytest.mark.parametrize(("head", "variant", "kind", "attention_kind"), [
    ("features", "raw_sum", "psa", "paper"),
    ("attended", "raw_mean", "conv_bn_relu", "danet"),
    ("attended", "softmax_mean", "psa", "danet"),
    ("features", "softmax_mean", "conv_bn_relu", "paper"),
])
def test_head_eq5_and_total_effect_from_the_formulas(head: str, variant: str, kind: str,
                                                     attention_kind: str) -> None:
    """The whole head in mode full (uniform counterfactual: A* = ones): detection scores, S,
    P (Eq. 5), P* from S*, Y_TE = P - P* and the loss, each against the direct computation."""
    config = head_config(head=head, sentiment_map=variant, branches=kind,
                         channel_attention=attention_kind, detection_weight=0.3, effect_weight=2.0)
    module = randomise(CTERNetHead(IN_CHANNELS, config), seed=9)
    with torch.no_grad():
        module.factual_attention.channel_attention.gamma.fill_(0.05)
        x = random_grid(10, scale=0.2)
        labels = torch.tensor([2])
        output = module(x, labels)
    grid = as_lists(x[0])
    attention = smad_f_reference(module.factual_attention, grid, kind, attention_kind)
    scores, sentiment = pooling_reference(module.pooling, attention, variant)
    factual = head_prediction(module, grid, sentiment)
    ones = [[[1.0] * SIDE for _ in range(SIDE)] for _ in range(ATTENTION_CHANNELS)]
    _, counterfactual_map = pooling_reference(module.pooling, ones, variant)
    counterfactual = head_prediction(module, grid, counterfactual_map)
    effect = [f - c for f, c in zip(factual, counterfactual)]

    def cross_entropy(logits: list[float], label: int) -> float:
        return -logits[label] + math.log(sum(math.exp(value) for value in logits))

    expected = {
        "detection_logits": [scores], "sentiment_map": [[sentiment]],
        "factual_logits": [factual], "counterfactual_logits": [counterfactual],
        "logits": [effect],
    }
    for field, values in expected.items():
        torch.testing.assert_close(getattr(output, field), torch.tensor(values, dtype=torch.float64),
                                   msg=field)
    loss = 0.3 * cross_entropy(scores, 2) + 2.0 * cross_entropy(effect, 2)
    # The model computes the loss in float32 on purpose (bf16 logits would lose it).
    assert output.loss is not None and output.loss.item() == pytest.approx(loss, rel=1e-6)


def test_eq5_features_head_total_effect_is_one_classifier_column_times_a_scalar() -> None:
    """With concat(S, X) and a linear FC after GAP, X's part of P and P* is identical, so
    Y_TE = W[:, 0] * (GAP(S) - GAP(S*)) for every image: the columns of X never matter and
    receive no gradient from the total-effect loss."""
    module = randomise(CTERNetHead(IN_CHANNELS, head_config(head="features")), seed=11)
    x = torch.randn(4, IN_CHANNELS, SIDE, SIDE, dtype=torch.float64)
    output = module(x, torch.tensor([0, 1, 2, 0]))
    assert output.sentiment_map is not None and output.attention is not None
    _, counterfactual_map = module.pooling(torch.ones_like(output.attention))
    scalar = output.sentiment_map.mean(dim=(1, 2, 3)) - counterfactual_map.mean(dim=(1, 2, 3))
    column = module.classifier.weight[:, 0]
    torch.testing.assert_close(output.logits, scalar[:, None] * column[None, :])
    module.zero_grad()
    assert output.loss is not None
    output.loss.backward()
    assert module.classifier.weight.grad is not None
    assert torch.count_nonzero(module.classifier.weight.grad[:, 1:]) == 0
    assert torch.count_nonzero(module.classifier.weight.grad[:, 0]) > 0


def test_attended_head_keeps_the_features_in_the_total_effect() -> None:
    module = randomise(CTERNetHead(IN_CHANNELS, head_config(head="attended")), seed=12)
    output = module(torch.randn(4, IN_CHANNELS, SIDE, SIDE, dtype=torch.float64),
                    torch.tensor([0, 1, 2, 0]))
    assert output.loss is not None
    output.loss.backward()
    assert module.classifier.weight.grad is not None
    assert torch.count_nonzero(module.classifier.weight.grad[:, 1:]) > 0
