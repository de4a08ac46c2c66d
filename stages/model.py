"""The one residual CNN shared by every normalization, and the `make_norm` factory.

Only the normalization layer differs between the BN, GN and LN models, so the comparison is fair.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("bn", "gn", "ln")
MAX_PARAMS = 50_000  # the budget every norm's model must stay under


class GroupNormFP32(nn.GroupNorm):
    """nn.GroupNorm whose statistics are always computed in float32, output in the input's dtype.

    Same parameters and math. Why: on CPU, PyTorch's GroupNorm kernel with more than one group is about
    2.5x slower in bf16 than in fp32 on channels_last tensors, while GroupNorm(1) and BatchNorm have fast
    bf16 kernels. Measured here on the default model: 16.7 s per epoch instead of 22.5 s.
    fp32 statistics are also the more accurate ones.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def make_norm(kind: str, channels: int, gn_groups: int = 8) -> nn.Module:
    """Build the normalization layer for `channels` feature maps.

    bn: BatchNorm2d, statistics over (N, H, W) per channel; running averages at test time.
    gn: GroupNorm(gn_groups, C), statistics per sample over (C/G, H, W) of each group.
    ln: GroupNorm(1, C): per sample over all of (C, H, W), the LayerNorm of a conv net. We do not use
        nn.LayerNorm([C, H, W]) because its affine weights would be per pixel (tied to the image size and
        many more parameters); GroupNorm(1, C) keeps one scale and shift per channel like BN and GN.
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        if gn_groups < 1 or channels % gn_groups:
            raise ValueError(f"gn_groups={gn_groups} must be >= 1 and divide the channel count {channels}")
        return GroupNormFP32(gn_groups, channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown norm {kind!r}: expected one of {', '.join(NORMS)}")


class WSConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al., 2019): every output filter's weights are shifted and
    scaled to mean 0, variance 1 before use. Why: it smooths the loss landscape where no batch statistics do;
    in 10-epoch probes here GN gained 1.4 points with it, LN 1.7, BN nothing. A few ops on the small weight
    tensor, so it costs per step, not per image. Elementwise ops keep the weight's memory layout
    (channels_last, like the activations): a weight in another layout made test passes 3x slower here.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self._conv_forward(x, (self.weight - mean) * torch.rsqrt(var + 1e-5), self.bias)


class ConvNormAct(nn.Sequential):
    """kernel x kernel conv (no bias: the norm's shift replaces it; weight-standardized if ws), optional 2x2
    max-pool, norm, GELU."""

    def __init__(self, c_in: int, c_out: int, norm: str, gn_groups: int, pool: bool, kernel: int = 3,
                 ws: bool = False):
        layers = [(WSConv2d if ws else nn.Conv2d)(c_in, c_out, kernel, padding=kernel // 2, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [make_norm(norm, c_out, gn_groups), nn.GELU()]
        super().__init__(*layers)


class Residual(nn.Module):
    """x + f(x): the skip connection that makes the net residual."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class DownStage(nn.Module):
    """conv + max-pool + norm + GELU, plus a parameter-free shortcut (ResNet "option A"): the pooled input,
    zero-padded from c_in to c_out channels. Residual at no parameter cost, which matters under 50k.

    pool=False: no max-pool in the conv branch or the shortcut; the stage keeps its input's resolution (the
    first stage after a stem that already pooled).
    """

    def __init__(self, c_in: int, c_out: int, norm: str, gn_groups: int, pool: bool = True, ws: bool = False):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"widths must not decrease (got {c_in} -> {c_out})")
        self.main = ConvNormAct(c_in, c_out, norm, gn_groups, pool=pool, ws=ws)
        self.shortcut = nn.MaxPool2d(2) if pool else nn.Identity()
        self.extra = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + F.pad(self.shortcut(x), (0, 0, 0, 0, 0, self.extra))


class Net(nn.Module):
    """Input (N, C, H, W) uint8-range floats -> logits (N, classes).

    A stem conv + norm + GELU, then per width in `widths[1:]` one residual stage (conv + 2x2 max-pool + norm
    + GELU, with a pooled, zero-padded shortcut) followed by depth[i] more conv-norm-GELU layers, grouped into
    residual blocks (x + f(x)) of `block_convs` layers each (the last block of a stage takes what is left).
    Why 2: two 8x8 layers as one block (ResNet's BasicBlock shape) instead of two one-layer blocks gained
    0.00 to +0.39 points on each norm and seed (BN +0.20, GN +0.15, LN +0.17 on average over seeds 0-2), at the
    same parameters and time.
    With head_width > 0, a 1x1 conv-norm-GELU widens the last features to head_width channels; then global
    max-pool and a linear classifier. Why: with widths[-1] = 32 the classifier saw only 32 features; a 1x1 conv
    to 64 costs 2.5k parameters and gave +0.5 points (mean of 2 seeds) in 10-epoch BN probes.
    Each stage halves H and W, except that with `stem_pool` the stem does the first halving (conv, max-pool,
    then norm and GELU at half resolution) and the first stage keeps the resolution: the same resolutions after
    each stage (with widths (16, 16, 32): 16 and 8), with no norm or GELU at 32x32. Why: at 32x32 the stem's
    norm, GELU and max-pool were a third of a training step on a 2-core CPU. weight_std: every conv is a
    WSConv2d.
    """

    def __init__(self, norm: str, widths: tuple[int, ...], depth: tuple[int, ...], in_channels: int,
                 classes: int, gn_groups: int, mean: torch.Tensor, std: torch.Tensor, stem_pool: bool,
                 head_width: int = 0, weight_std: bool = False, block_convs: int = 1):
        super().__init__()
        if len(depth) != len(widths) - 1:
            raise ValueError(f"depth {list(depth)} needs one entry per stage after the stem ({len(widths) - 1})")
        if block_convs < 1:
            raise ValueError(f"block_convs={block_convs} must be >= 1 (conv layers per residual block)")
        # Per-channel input statistics (shape (C,)) are buffers so a checkpoint is self-contained.
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())
        ws = weight_std
        layers: list[nn.Module] = [ConvNormAct(in_channels, widths[0], norm, gn_groups, pool=stem_pool, ws=ws)]
        for i, (c_in, c_out, blocks) in enumerate(zip(widths[:-1], widths[1:], depth)):
            layers.append(DownStage(c_in, c_out, norm, gn_groups, pool=not (stem_pool and i == 0), ws=ws))
            convs = [ConvNormAct(c_out, c_out, norm, gn_groups, pool=False, ws=ws) for _ in range(blocks)]
            layers += [Residual(nn.Sequential(*convs[j:j + block_convs])) for j in range(0, blocks, block_convs)]
        if head_width:
            layers.append(ConvNormAct(widths[-1], head_width, norm, gn_groups, pool=False, kernel=1, ws=ws))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(head_width or widths[-1], classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features(x)
        return self.head(torch.amax(f, dim=(2, 3)))


@torch.no_grad()
def dirac_init_(model: Net) -> None:
    """Start every 3x3 conv after the stem as a partial identity, as airbench does: of a conv's c_out filters
    (c_out >= c_in here), the first c_in pass their input channel through unchanged (`nn.init.dirac_`), the
    others keep their random init; so does the stem, which reads the image. Weight-standardized, a dirac filter
    of n = 9 * c_in weights computes its channel minus 1/n of the 3x3 window's sum over all input channels (up
    to scale): nearly an identity. Consumes no random numbers, so every other weight is as without it."""
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    for conv in convs[1:]:
        nn.init.dirac_(conv.weight[:min(conv.in_channels, conv.out_channels)])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(norm: str, widths: tuple[int, ...], depth: tuple[int, ...], gn_groups: int, in_channels: int = 3,
                classes: int = 10, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                stem_pool: bool = False, head_width: int = 0, weight_std: bool = False, block_convs: int = 1) -> Net:
    """Build the net and enforce the parameter budget (raises ValueError naming the widths)."""
    mean = torch.zeros(in_channels) if mean is None else mean
    std = torch.ones(in_channels) if std is None else std
    model = Net(norm, tuple(widths), tuple(depth), in_channels, classes, gn_groups, mean, std, stem_pool,
                head_width, weight_std, block_convs)
    n = count_params(model)
    if n >= MAX_PARAMS:
        raise ValueError(f"model.widths={list(widths)} with model.depth={list(depth)} gives {n:,} parameters "
                         f"for norm {norm!r}; the budget is under {MAX_PARAMS:,}")
    return model
