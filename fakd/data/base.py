"""The dataset protocol every segmentation dataset follows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from fakd.vocab import IGNORE_INDEX  # re-exported: the datasets' ignore label

Sample = tuple[torch.Tensor, torch.Tensor]


class SegmentationDataset(Dataset):
    """Map-style dataset of (image uint8 3 x H x W, label int64 H x W) with ids 0..C-1 and 255 = ignore."""

    num_classes: int
    class_names: list[str]
    ignore_index: int = IGNORE_INDEX

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError


class TransformedDataset(SegmentationDataset):
    """A dataset whose items are `transform(image, label)`; keeps the class metadata."""

    def __init__(self, dataset: SegmentationDataset, transform: Callable[[torch.Tensor, torch.Tensor], Sample]):
        self.dataset = dataset
        self.transform = transform
        self.num_classes = dataset.num_classes
        self.class_names = list(dataset.class_names)
        self.ignore_index = dataset.ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        return self.transform(*self.dataset[index])
