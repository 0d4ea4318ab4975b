"""The module both zoo loaders return (frozen, eval mode, harness-normalised images in, full-size logits out), and
`ZooTeacher`, its adapter to the trainer's teacher interface."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from fakd.models.zoo.normalization import InputRenormalization


class ZooSegmenter(nn.Module):
    """`renormalize` then `network`; forward maps N x 3 x H x W images to N x `num_classes` x H x W logits.

    `source` is "mmseg" or "torchvision"; `architecture` describes what was read from the checkpoint;
    `class_names` are the checkpoint's class names when its metadata lists them.
    """

    def __init__(
        self,
        network: nn.Module,
        renormalize: InputRenormalization,
        num_classes: int,
        *,
        source: str,
        architecture: Any,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.renormalize = renormalize
        self.network = network
        self.num_classes = num_classes
        self.source = source
        self.architecture = architecture
        self.class_names = class_names
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.renormalize(images))

    def decode_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits at the network's own stride (mmseg: the decode head's `conv_seg` output; torchvision: the
        classifier's), i.e. `forward` without its final bilinear resize to the input size."""
        return self.network.decode(self.renormalize(images))


class ZooOutput(NamedTuple):
    """What the trainer reads from a teacher: `logits` N x C x h' x w'."""

    logits: torch.Tensor


class ZooTeacher(nn.Module):
    """A `ZooSegmenter` as the trainer's frozen teacher: `forward(images).logits`, like the harness's `Segmenter`.

    For distillation (`full_resolution=False`) the logits are the network's own, at its stride (8 for the -d8
    mmseg models), as a harness teacher's are at its head's stride: the method's Z_t, which the losses resize
    bilinearly to the student's h x w once (`fakd.losses.kd.resize_teacher`; no resize at all when both have
    the same stride). Resizing the network's full-size output down instead would interpolate twice and is not
    the same numbers (not even the identity when h' = h), and it would materialise N x C x H x W logits per
    step. For evaluation (`full_resolution=True`) the logits are the network's own full-size prediction, so
    the recorded mIoU is that of the published model (its head's `align_corners` included).
    """

    def __init__(self, network: ZooSegmenter, *, full_resolution: bool = False) -> None:
        super().__init__()
        self.network = network
        self.full_resolution = full_resolution
        self.num_classes = network.num_classes
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ZooTeacher:
        """Always eval mode (BatchNorm on its running statistics, no dropout): a zoo teacher is never trained."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> ZooOutput:
        if self.full_resolution:
            return ZooOutput(self.network(images))
        return ZooOutput(self.network.decode_logits(images))
