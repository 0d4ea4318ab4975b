"""Segmentation datasets, joint transforms and seeded sampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakd.data.base import IGNORE_INDEX, SegmentationDataset, TransformedDataset
from fakd.data.synthetic import SyntheticSegmentation
from fakd.errors import UserError

DATASETS = ("synthetic", "cityscapes", "voc", "ade20k", "camvid")
IMPLEMENTED = ("synthetic",)
SYNTHETIC_OPTIONS = ("num_classes", "image_size", "length", "seed")


def get_dataset(
    name: str, root: str | None, split: str, transform: Callable[..., Any] | None = None, **options: Any
) -> SegmentationDataset:
    """The dataset `name` (split `split`), with items `transform(image, label)` when a transform is given."""
    if name == "synthetic":
        unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS))
        if unknown:
            raise UserError(
                f"unknown option {unknown[0]!r} for the synthetic dataset; accepted: {', '.join(SYNTHETIC_OPTIONS)}",
                key=f"data.{unknown[0]}",
            )
        dataset: SegmentationDataset = SyntheticSegmentation(split=split, **options)
    elif name in DATASETS:
        raise UserError(
            f"dataset {name!r} is not implemented yet; implemented now: {', '.join(IMPLEMENTED)}",
            key="data.name",
        )
    else:
        raise UserError(
            f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)} (implemented now: {', '.join(IMPLEMENTED)})",
            key="data.name",
        )
    return TransformedDataset(dataset, transform) if transform is not None else dataset


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "SegmentationDataset",
    "SyntheticSegmentation",
    "TransformedDataset",
    "get_dataset",
]
