"""Segmentation heads: a body that makes per-pixel features, then Dropout(0.1) and a 1x1 classifier.

Bodies: `deeplabv3` (ASPP + 3x3 conv), `psp` (pyramid pooling + 3x3 conv) and `fcn` (one 3x3 conv).
Global (1x1) pooled branches have no BatchNorm, so training with one image per batch works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fakd.errors import UserError
from fakd.vocab import HEADS

PSP_POOL_SCALES = (1, 2, 3, 6)
_BASE_RATES = (6, 12, 18)  # DeepLabV3 atrous rates at output stride 16


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
) -> nn.Sequential:
    """A bias-free conv (same padding), BatchNorm and ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """Atrous rates scaled to the output stride: (6, 12, 18) at 16, doubled at 8, halved at 32."""
    scale = 16 / output_stride
    return tuple(max(1, round(rate * scale)) for rate in _BASE_RATES)  # type: ignore[return-value]


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average, 1x1 conv + ReLU, broadcast back.

    It has no BatchNorm so that training with one image per batch works.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 branch, three atrous 3x3 branches, image pooling, projection."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        branches: list[nn.Module] = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, dilation=rate) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(out_channels * len(branches), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the input concatenated with, per scale s, an s x s adaptive average pool,
    a 1x1 conv-BN-ReLU and a bilinear upsampling back to the input size.

    The 1x1 level (s = 1) is a 1x1 conv with bias + ReLU, without BatchNorm (like `ImagePooling`), since
    BatchNorm over one pooled value per image fails in training with batch size 1.
    """

    def __init__(self, in_channels: int, branch_channels: int, scales: tuple[int, ...] = PSP_POOL_SCALES) -> None:
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, branch_channels, 1), nn.ReLU(inplace=True))
            if scale == 1
            else conv_bn_relu(in_channels, branch_channels, 1)
            for scale in scales
        )
        self.out_channels = in_channels + len(scales) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        levels = [x]
        for scale, branch in zip(self.scales, self.branches, strict=True):
            pooled = branch(F.adaptive_avg_pool2d(x, scale))
            levels.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return torch.cat(levels, dim=1)


class SegmentationHead(nn.Module):
    """`body` -> Dropout(0.1) -> `classifier`; forward returns (logits, classifier input)."""

    def __init__(self, body: nn.Module, head_channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.dropout(self.body(x))
        return self.classifier(features), features


def build_head(
    name: str, in_channels: int, num_classes: int, output_stride: int, head_channels: int = 256
) -> SegmentationHead:
    """A `deeplabv3` (ASPP + 3x3 conv), `psp` (pyramid pooling, branches of `head_channels`, + 3x3 conv
    to `head_channels`) or `fcn` (one 3x3 conv) head."""
    if name == "deeplabv3":
        body: nn.Module = nn.Sequential(
            ASPP(in_channels, head_channels, aspp_rates(output_stride)),
            conv_bn_relu(head_channels, head_channels, 3),
        )
    elif name == "psp":
        pyramid = PyramidPooling(in_channels, head_channels)
        body = nn.Sequential(pyramid, conv_bn_relu(pyramid.out_channels, head_channels, 3))
    elif name == "fcn":
        body = conv_bn_relu(in_channels, head_channels, 3)
    else:
        raise UserError(f"unknown head {name!r}; accepted: {', '.join(HEADS)}", key="head")
    return SegmentationHead(body, head_channels, num_classes)
