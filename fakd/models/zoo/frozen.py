"""The module both zoo loaders return: frozen, eval mode, harness-normalised images in, full-size logits out."""

from __future__ import annotations

from typing import Any

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
