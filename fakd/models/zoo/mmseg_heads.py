"""mmsegmentation's ASPPHead, PSPHead, FCNHead and EncoderDecoder in plain torch, with mmseg's parameter names.

Every conv-norm-act unit is mmcv's ConvModule (`conv` without bias, `bn`, ReLU). Each head ends in mmseg's
`cls_seg`: Dropout2d then the 1x1 `conv_seg` (with bias). `EncoderDecoder.forward` is mmseg's
`encode_decode` in whole-image mode: backbone, decode head on the stage `in_index`, then the logits resized
bilinearly to the input size with the head's `align_corners`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """mmcv ConvModule with BN and ReLU: keys `conv.weight`, `bn.*`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class DecodeHead(nn.Module):
    """mmseg BaseDecodeHead's classifier: Dropout2d(dropout_ratio) then the 1x1 `conv_seg`."""

    def __init__(self, channels: int, num_classes: int, align_corners: bool, dropout_ratio: float = 0.1) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def cls_seg(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(features))

    def upsample(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)


class ASPPHead(DecodeHead):
    """DeepLabV3: image pooling + one branch per dilation (1x1 where the dilation is 1), concat, 3x3 bottleneck."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dilations: Sequence[int],
                 align_corners: bool = False) -> None:
        super().__init__(channels, num_classes, align_corners)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1) if rate == 1 else ConvModule(in_channels, channels, 3, rate, rate)
            for rate in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.upsample(self.image_pool(x), x.shape[-2:])]
        branches += [branch(x) for branch in self.aspp_modules]
        return self.cls_seg(self.bottleneck(torch.cat(branches, dim=1)))


class PSPHead(DecodeHead):
    """PSPNet: the input and its pooled-conv-upsampled pyramid (one level per scale), concat, 3x3 bottleneck."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, pool_scales: Sequence[int],
                 align_corners: bool = False) -> None:
        super().__init__(channels, num_classes, align_corners)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(in_channels, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [x] + [self.upsample(level(x), x.shape[-2:]) for level in self.psp_modules]
        return self.cls_seg(self.bottleneck(torch.cat(levels, dim=1)))


class FCNHead(DecodeHead):
    """FCN: `num_convs` convs (dilated by `dilation`), optionally `conv_cat` over [input, convs output]."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int, kernel_size: int = 3,
                 dilation: int = 1, concat_input: bool = True, align_corners: bool = False) -> None:
        super().__init__(channels, num_classes, align_corners)
        padding = (kernel_size // 2) * dilation
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(
            *(ConvModule(cin, channels, kernel_size, padding, dilation) for cin in widths[:num_convs])
        )
        self.conv_cat = (
            ConvModule(in_channels + channels, channels, kernel_size, padding=kernel_size // 2)
            if concat_input else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.convs(x)
        if self.conv_cat is not None:
            features = self.conv_cat(torch.cat([x, features], dim=1))
        return self.cls_seg(features)


class EncoderDecoder(nn.Module):
    """`backbone` -> `decode_head` on stage `in_index` -> logits resized to the input size."""

    def __init__(self, backbone: nn.Module, decode_head: DecodeHead, in_index: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.in_index = in_index

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """The decode head's logits at its own stride (before the resize to the input size)."""
        return self.decode_head(self.backbone(images)[self.in_index])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head.upsample(self.decode(images), images.shape[-2:])
