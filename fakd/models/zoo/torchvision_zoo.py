"""Loading a torchvision segmentation model from a local state dict file (no downloads).

The model is torchvision's own (built with weights=None, weights_backbone=None), so its forward is exactly
torchvision's; the returned module gives its `out` logits (N x C x H x W, already at the input size).
`aux_classifier.*` keys are ignored. torchvision models expect the ImageNet mean/std on 0-1 RGB pixels,
the harness's own normalisation, so the re-normalisation is a no-op unless other input statistics are given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import segmentation

from fakd.errors import UserError
from fakd.models.zoo.checkpoint import (
    checkpoint_error,
    load_exactly,
    read_checkpoint,
    strip_prefix,
    tensor_state_dict,
)
from fakd.models.zoo.frozen import ZooSegmenter
from fakd.models.zoo.normalization import InputRenormalization, harness_normalization
from fakd.vocab import TORCHVISION_ARCHS

TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # what torchvision's segmentation weights expect, on 0-1 RGB pixels
TORCHVISION_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TorchvisionArchitecture:
    arch: str
    num_classes: int


class TorchvisionLogits(nn.Module):
    """A torchvision segmentation model whose forward returns only its `out` logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's logits at its own stride: torchvision's forward without its final resize to the
        input size (LR-ASPP's classifier takes the backbone's "low" and "high" maps, the others its "out" map)."""
        features = self.model.backbone(images)
        if isinstance(self.model, segmentation.LRASPP):
            return self.model.classifier(features)
        return self.model.classifier(features["out"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


def load_torchvision(
    arch: str,
    checkpoint: str | os.PathLike[str],
    num_classes: int | None = None,
    *,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> ZooSegmenter:
    """A frozen torchvision `arch` with the weights in `checkpoint` (a state dict, or one under `model` or
    `state_dict`, as torchvision's reference scripts save); `num_classes` None takes the file's class count,
    otherwise it must equal it; `input_mean`/`input_std` default to the harness's ImageNet values."""
    if arch not in TORCHVISION_ARCHS:
        raise UserError(f"unknown torchvision model {arch!r}; accepted: {', '.join(TORCHVISION_ARCHS)}",
                        key="teacher.arch")
    path = os.path.expanduser(os.fspath(checkpoint))
    expected = f"a state dict of torchvision's {arch} (keys backbone.*, classifier.*)"
    content = read_checkpoint(path, expected)
    state = strip_prefix(tensor_state_dict(path, content, expected, wrappers=("model", "state_dict")), "module.")
    state = {key: value for key, value in state.items() if not key.startswith("aux_classifier.")}
    file_classes = _class_count(arch, state, path, expected)
    if num_classes is not None and num_classes != file_classes:
        raise checkpoint_error(path, f"has {file_classes} classes, not num_classes={num_classes}", expected)
    model = _build(arch, file_classes)
    load_exactly(model, state, path, expected)
    input_mean, input_std = harness_normalization(input_mean, input_std)
    renormalize = InputRenormalization(input_mean, input_std, TORCHVISION_MEAN, TORCHVISION_STD, input_scale=1.0)
    return ZooSegmenter(TorchvisionLogits(model), renormalize, file_classes, source="torchvision",
                        architecture=TorchvisionArchitecture(arch, file_classes))


def _build(arch: str, num_classes: int) -> nn.Module:
    kwargs = {} if arch.startswith("lraspp") else {"aux_loss": False}
    return getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def _class_count(arch: str, state: dict[str, torch.Tensor], path: str, expected: str) -> int:
    """The number of classes of the file: dim 0 of the keys whose shape follows the class count."""
    with torch.device("meta"):
        two, three = _build(arch, 2).state_dict(), _build(arch, 3).state_dict()
    class_keys = [key for key, value in two.items() if value.shape != three[key].shape]
    missing = [key for key in class_keys if key not in state]
    if missing:
        raise checkpoint_error(path, f"lacks the classifier weights {', '.join(missing)}", expected)
    counts = {key: state[key].shape[0] if state[key].dim() else 0 for key in class_keys}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        listing = ", ".join(f"{key} {tuple(state[key].shape)}" for key in class_keys)
        raise checkpoint_error(path, f"has inconsistent classifier shapes ({listing})", expected)
    return next(iter(counts.values()))
