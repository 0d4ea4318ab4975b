"""mmsegmentation's ResNetV1c in plain torch, with its parameter names (so its state dicts load as they are).

V1c = ResNet with a deep stem: three 3x3 conv-BN-ReLU (stride 2 on the first; `stem.0/1`, `stem.3/4`,
`stem.6/7`), then a 3x3 max pool (stride 2), then four stages `layer1..layer4` of BasicBlock (depth 18, 34)
or Bottleneck (50, 101, 152) blocks, strides at the 3x3 conv ("pytorch" style) or at the first 1x1 conv
("caffe" style). Dilated stages follow mmseg's `ResLayer`: with `contract_dilation` the first block of a
stage with dilation d > 1 uses d // 2; `multi_grid` (last stage only) sets each block's dilation outright.
In a BasicBlock only the first 3x3 conv is dilated, the second keeps dilation 1 (as in mmseg).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BOTTLENECK_DEPTHS = (50, 101, 152)


@dataclass(frozen=True)
class StageLayout:
    """Per-stage strides and dilations; `multi_grid` applies to the last stage."""

    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    multi_grid: tuple[int, ...] | None = None
    contract_dilation: bool = True

    @property
    def output_stride(self) -> int:
        stride = 4  # stem conv + max pool
        for step in self.strides:
            stride *= step
        return stride


def block_dilations(layout: StageLayout, stage: int, num_blocks: int) -> list[int]:
    """The dilation of each block of `stage` (0-based), as mmseg's ResLayer assigns them."""
    dilation = layout.dilations[stage]
    if layout.multi_grid is not None and stage == len(layout.dilations) - 1:
        return [layout.multi_grid[i] for i in range(num_blocks)]
    first = dilation // 2 if dilation > 1 and layout.contract_dilation else dilation
    return [first] + [dilation] * (num_blocks - 1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None,
                 caffe_style: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None,
                 caffe_style: bool = False) -> None:
        super().__init__()
        stride1, stride3 = (stride, 1) if caffe_style else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stem(stem_channels: int) -> nn.Sequential:
    half = stem_channels // 2
    layers: list[nn.Module] = []
    for index, (cin, cout) in enumerate(((3, half), (half, half), (half, stem_channels))):
        layers += [nn.Conv2d(cin, cout, 3, stride=2 if index == 0 else 1, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """Forward returns the four stage outputs, as mmseg's backbone (out_indices 0-3) does."""

    def __init__(
        self,
        depth: int,
        layout: StageLayout,
        stem_channels: int = 64,
        base_channels: int = 64,
        caffe_style: bool = False,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        block = Bottleneck if depth in BOTTLENECK_DEPTHS else BasicBlock
        self.depth = depth
        self.layout = layout
        self.stem = _stem(stem_channels)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for stage, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = base_channels * 2**stage
            stage_module = _stage(block, inplanes, planes, layout.strides[stage],
                                  block_dilations(layout, stage, num_blocks), caffe_style)
            self.add_module(f"layer{stage + 1}", stage_module)
            inplanes = planes * block.expansion
            self.out_channels.append(inplanes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outputs = []
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
            outputs.append(x)
        return outputs


def _stage(
    block: type[BasicBlock] | type[Bottleneck],
    inplanes: int,
    planes: int,
    stride: int,
    dilations: Sequence[int],
    caffe_style: bool,
) -> nn.Sequential:
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))
    blocks = [block(inplanes, planes, stride, dilations[0], downsample, caffe_style)]
    blocks += [block(outplanes, planes, 1, dilation, None, caffe_style) for dilation in dilations[1:]]
    return nn.Sequential(*blocks)
