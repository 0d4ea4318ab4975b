"""Joint image/label transforms and seeded sampling; all randomness comes from explicit generators.

A training sample is addressed by the key (index, draw): `draw` is its global position in the sample
stream, so its augmentation is a pure function of (seed, index, draw), whatever the worker count or
resume point.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from fakd.data.base import IGNORE_INDEX, Sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SampleKey = tuple[int, int]


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator whose state is a deterministic hash of (seed, *keys), each in [0, 2**64).

    Every value is spread over two 32-bit words after a count word, so distinct key tuples never share
    an entropy pool (SeedSequence alone treats [a, b] and [a, b, 0] as the same).
    """
    values = [int(seed), *map(int, keys)]
    if any(not 0 <= v < 2**64 for v in values):
        raise ValueError(f"seed and keys must be in [0, 2**64), got {values}")
    words = [len(values)] + [half for v in values for half in (v & 0xFFFFFFFF, v >> 32)]
    high, low = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(high) << 32) | int(low))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class Normalize:
    """uint8 (or 0..255 float) 3 x H x W -> float32 (x / 255 - mean) / std."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() / 255.0 - self.mean) / self.std


class EvalTransform:
    """Normalise the image; the label is only cast to int64."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Sample:
        return self.normalize(image), label.long()


class TrainTransform:
    """Random scale, pad to the crop size, random crop, random horizontal flip, normalise.

    Padding goes to the bottom/right: image 0 after normalisation (the mean colour), label `ignore_index`.
    Random draws happen in a fixed order (scale, top, left, flip) from the given generator.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.crop_size = _pair(crop_size)
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))
        self.hflip = hflip
        self.normalize = Normalize(mean, std)
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator) -> Sample:
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand((), generator=generator))
        image, label = self._rescale(image, label, scale)
        image = self.normalize(image)
        image, label = self._pad(image, label)
        crop_h, crop_w = self.crop_size
        height, width = label.shape
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
        image = image[:, top : top + crop_h, left : left + crop_w]
        label = label[top : top + crop_h, left : left + crop_w]
        flip = float(torch.rand((), generator=generator)) < 0.5
        if self.hflip and flip:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()

    @staticmethod
    def _rescale(image: torch.Tensor, label: torch.Tensor, scale: float) -> Sample:
        height, width = label.shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size == (height, width):
            return image.float(), label.long()
        resized = F.interpolate(
            image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
        labels = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        return resized.clamp_(0.0, 255.0), labels.long()

    def _pad(self, image: torch.Tensor, label: torch.Tensor) -> Sample:
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - label.shape[0], 0), max(crop_w - label.shape[1], 0)
        if pad_h == 0 and pad_w == 0:
            return image, label
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image, label


class TrainSampleView(Dataset):
    """`view[(index, draw)]` = `transform(*dataset[index], seeded_generator(seed, index, draw))`."""

    def __init__(self, dataset: Any, transform: TrainTransform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.num_classes = getattr(dataset, "num_classes", None)
        self.class_names = getattr(dataset, "class_names", None)
        self.ignore_index = getattr(dataset, "ignore_index", IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Sample:
        if not isinstance(key, tuple):
            raise TypeError(f"TrainSampleView is indexed by (index, draw) keys, got {key!r}")
        index, draw = key
        image, label = self.dataset[index]
        return self.transform(image, label, seeded_generator(self.seed, index, draw))


class IterationSampler(Sampler[list[SampleKey]]):
    """Batch sampler over iterations [start_iteration, total_iterations) yielding (index, draw) keys.

    Sample positions p = i * batch_size + k walk through successive permutations of the dataset
    (epoch e = p // dataset_len uses `seeded_generator(seed, e)`), and draw = p, so batch i is a pure
    function of (seed, i).
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int,
        start_iteration: int = 0,
        total_iterations: int | None = None,
    ) -> None:
        if total_iterations is None:
            raise TypeError("IterationSampler needs total_iterations")
        if dataset_len < 1 or batch_size < 1:
            raise ValueError(f"dataset_len and batch_size must be >= 1, got {dataset_len}, {batch_size}")
        if not 0 <= start_iteration <= total_iterations:
            raise ValueError(
                f"need 0 <= start_iteration <= total_iterations, got {start_iteration}, {total_iterations}"
            )
        self.dataset_len, self.batch_size, self.seed = dataset_len, batch_size, seed
        self.start_iteration, self.total_iterations = start_iteration, total_iterations

    def __len__(self) -> int:
        return self.total_iterations - self.start_iteration

    def permutation(self, epoch: int) -> list[int]:
        """The dataset order of one epoch."""
        return torch.randperm(self.dataset_len, generator=seeded_generator(self.seed, epoch)).tolist()

    def batch(self, iteration: int) -> list[SampleKey]:
        """The keys of one iteration's batch."""
        return list(self._keys(iteration, {}))

    def __iter__(self) -> Iterator[list[SampleKey]]:
        cache: dict[int, list[int]] = {}
        for iteration in range(self.start_iteration, self.total_iterations):
            yield list(self._keys(iteration, cache))

    def _keys(self, iteration: int, cache: dict[int, list[int]]) -> Iterator[SampleKey]:
        first = iteration * self.batch_size
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.dataset_len)
            if epoch not in cache:
                cache.clear()
                cache[epoch] = self.permutation(epoch)
            yield cache[epoch][offset], position
