"""Re-normalising the harness's images into what a zoo model was trained on.

The harness feeds `(x / 255 - mean) / std` with the ImageNet mean/std (fakd/data/transforms.py `Normalize`),
channels RGB. A model that expects `(x - model_mean) / model_std` on 0-255 pixels (mmsegmentation), or on
another channel order, gets an exact per-channel affine map (and channel flip) of the harness's tensor.
When the two normalisations agree up to float error the map is skipped entirely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_TOLERANCE = 1e-6


class InputRenormalization(nn.Module):
    """`x -> x[:, order] * scale + shift`, or the identity when `is_identity`."""

    def __init__(
        self,
        input_mean: Sequence[float],
        input_std: Sequence[float],
        model_mean: Sequence[float],
        model_std: Sequence[float],
        *,
        input_scale: float = 255.0,
        flip_channels: bool = False,
    ) -> None:
        """`input_*` on 0-1 pixels (scaled by `input_scale` to the model's range), `model_*` on the model's
        pixel range, per channel in the model's channel order; `flip_channels`: the model expects BGR."""
        super().__init__()
        order = [2, 1, 0] if flip_channels else [0, 1, 2]
        source_mean = torch.tensor(input_mean, dtype=torch.float64)[order] * input_scale
        source_std = torch.tensor(input_std, dtype=torch.float64)[order] * input_scale
        mean = torch.tensor(model_mean, dtype=torch.float64)
        std = torch.tensor(model_std, dtype=torch.float64)
        scale, shift = source_std / std, (source_mean - mean) / std
        self.is_identity = not flip_channels and bool(
            torch.allclose(scale, torch.ones_like(scale), rtol=0, atol=_TOLERANCE)
            and torch.allclose(shift, torch.zeros_like(shift), rtol=0, atol=_TOLERANCE)
        )
        self.flip_channels = flip_channels
        self.register_buffer("scale", scale.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return images
        if self.flip_channels:
            images = images.flip(1)
        return images * self.scale + self.shift

    def extra_repr(self) -> str:
        if self.is_identity:
            return "identity"
        return f"flip_channels={self.flip_channels}, scale={self.scale.flatten().tolist()}, " \
            f"shift={self.shift.flatten().tolist()}"


def harness_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[Sequence[float], Sequence[float]]:
    """`mean`/`std` where given, else the harness's ImageNet ones (fakd/data/transforms.py)."""
    from fakd.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # imported late: fakd.data is heavier

    return (IMAGENET_MEAN if mean is None else mean), (IMAGENET_STD if std is None else std)
