"""The CNN side of a hybrid ViT: a backbone that turns images into a feature map, and the
embedding that cuts that map into p x p patches (p = 1 for the ResNet hybrids: every position of
the map is a token) and projects them to the Transformer width.

The backbone is timm's ResNet-V2 as its hybrid ViTs use it (BiT's ResNet with `preact=False`):
weight-standardised convs with TensorFlow "SAME" padding (the official JAX weights assume it),
GroupNorm with ReLU, a 7x7/2 conv + 3x3/2 max-pool stem and bottleneck stages. Module and
parameter names follow timm (`stem.conv`, `stem.norm`, `stages.i.blocks.j.{conv1..3, norm1..3,
downsample.conv, downsample.norm}`; a stem-only backbone is the stem itself: `conv`, `norm`), so
timm state dicts load by name.

Shapes: B batch, C channels, H/W spatial, s = the backbone's stride, p = patch size, D width.
    image (B, C, H, W) -> backbone (B, C', H/s, W/s) -> proj (B, D, H/(s p), W/(s p)) -> (B, N, D)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig
from .layers import check_image_size

GN_EPS = 1e-5  # GroupNorm eps (timm's GroupNormAct default)
WS_EPS = 1e-8  # weight-standardisation eps of timm's hybrid ResNets


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one side: output = ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = _same_pad(x.shape[-2], kernel, stride)
    left, right = _same_pad(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class StdConv2d(nn.Conv2d):
    """Conv2d (no bias) whose weight is standardised per output channel (zero mean, unit
    variance over fan-in) at every call; TensorFlow "SAME" padding."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int, stride: int = 1) -> None:
        super().__init__(in_chans, out_chans, kernel, stride=stride, padding=0, bias=False)
        self.eps = WS_EPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (w - mean) / sqrt(var + eps) per output channel, computed as a batch norm over the
        # flattened weight: the kernel timm uses, so hybrid weights give timm's logits to 1e-5
        w = self.weight
        w = F.batch_norm(
            w.reshape(1, self.out_channels, -1),
            None,
            None,
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(w)
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, None, self.stride)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, then ReLU unless `act=False` (timm's GroupNormAct)."""

    def __init__(self, num_groups: int, channels: int, act: bool = True) -> None:
        super().__init__(num_groups, channels, eps=GN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


class MaxPoolSame(nn.Module):
    """3x3 / 2 max-pool with "SAME" padding (padded with -inf, so padding never wins)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)


def make_stem(in_chans: int, width: int, num_groups: int) -> nn.Sequential:
    """7x7/2 conv -> GroupNorm + ReLU -> 3x3/2 max-pool: (B, C, H, W) -> (B, width, H/4, W/4)."""
    return nn.Sequential(
        OrderedDict(
            conv=StdConv2d(in_chans, width, 7, stride=2),
            norm=GroupNormAct(num_groups, width),
            pool=MaxPoolSame(),
        )
    )


class Downsample(nn.Module):
    """The projection shortcut of a stage's first block: 1x1 conv (strided) + GroupNorm."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, num_groups: int) -> None:
        super().__init__()
        self.conv = StdConv2d(in_chans, out_chans, 1, stride=stride)
        self.norm = GroupNormAct(num_groups, out_chans, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck (ResNet v1.5: the stride on the 3x3 conv):
    relu(x' + norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x))))))))), x' the shortcut."""

    def __init__(
        self, in_chans: int, out_chans: int, stride: int, num_groups: int, project: bool
    ) -> None:
        super().__init__()
        mid = out_chans // 4
        self.downsample = Downsample(in_chans, out_chans, stride, num_groups) if project else None
        self.conv1 = StdConv2d(in_chans, mid, 1)
        self.norm1 = GroupNormAct(num_groups, mid)
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride)
        self.norm2 = GroupNormAct(num_groups, mid)
        self.conv3 = StdConv2d(mid, out_chans, 1)
        self.norm3 = GroupNormAct(num_groups, out_chans, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class ResNetStage(nn.Module):
    def __init__(
        self, in_chans: int, out_chans: int, depth: int, stride: int, num_groups: int
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                Bottleneck(
                    in_chans if i == 0 else out_chans,
                    out_chans,
                    stride if i == 0 else 1,
                    num_groups,
                    project=i == 0,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Stem + bottleneck stages: (B, C, H, W) -> (B, widths[-1], H/stride, W/stride)."""

    def __init__(self, config: BackboneConfig, in_chans: int) -> None:
        super().__init__()
        g = config.num_groups
        self.stem = make_stem(in_chans, config.stem_width, g)
        stages, prev = [], config.stem_width
        for i, (depth, width) in enumerate(zip(config.layers, config.stage_widths, strict=True)):
            stages.append(ResNetStage(prev, width, depth, 1 if i == 0 else 2, g))
            prev = width
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class Backbone(Protocol):
    """What a hybrid needs of a CNN: a module mapping (B, C, H, W) images to a (B, out_channels,
    H / stride, W / stride) feature map. Any module with this contract can feed `HybridEmbed`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def build_backbone(config: BackboneConfig, in_chans: int) -> nn.Module:
    """The ResNet-V2 of `config`; with no stages, the stem alone (as timm builds it)."""
    if not config.layers:
        return make_stem(in_chans, config.stem_width, config.num_groups)
    return ResNetV2(config, in_chans)


class HybridEmbed(nn.Module):
    """Backbone feature map -> p x p patches -> D-dim tokens (one conv, kernel = stride = p)."""

    def __init__(
        self,
        backbone: nn.Module,
        img_size: int,
        stride: int,
        out_channels: int,
        patch_size: int,
        dim: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.img_size = img_size
        self.stride = stride
        self.patch_size = patch_size
        self.proj = nn.Conv2d(out_channels, dim, kernel_size=patch_size, stride=patch_size)

    @property
    def grid_size(self) -> int:
        return self.img_size // (self.stride * self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, self.img_size)
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


def backbone_flops(config: BackboneConfig, in_chans: int, img_size: int) -> int:
    """Forward FLOPs (2 per multiply-add) of the backbone's convs for one image."""

    def conv(size: int, cin: int, cout: int, kernel: int, stride: int) -> tuple[int, int]:
        out = math.ceil(size / stride)
        return out, 2 * out * out * cout * cin * kernel * kernel

    size, total = img_size, 0
    size, f = conv(size, in_chans, config.stem_width, 7, 2)
    total += f
    size = math.ceil(size / 2)  # max-pool
    prev = config.stem_width
    for i, (depth, width) in enumerate(zip(config.layers, config.stage_widths, strict=True)):
        mid = width // 4
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            cin = prev if j == 0 else width
            if j == 0:
                total += conv(size, cin, width, 1, stride)[1]
            total += conv(size, cin, mid, 1, 1)[1]
            out, f = conv(size, mid, mid, 3, stride)
            total += f + conv(out, mid, width, 1, 1)[1]
            size = out
        prev = width
    return total
