"""Segmentation datasets, joint transforms and seeded sampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakd.data.ade20k import ADE20K
from fakd.data.base import IGNORE_INDEX, SegmentationDataset, TransformedDataset
from fakd.data.camvid import CamVid
from fakd.data.cityscapes import Cityscapes
from fakd.data.synthetic import SyntheticSegmentation
from fakd.data.voc import VOC
from fakd.errors import UserError
from fakd.vocab import DATASETS

SYNTHETIC_OPTIONS = ("num_classes", "image_size", "length", "seed")
# dataset on disk -> (class, the options it accepts besides root and split)
ON_DISK: dict[str, tuple[Callable[..., SegmentationDataset], tuple[str, ...]]] = {
    "cityscapes": (Cityscapes, ("unknown_labels",)),
    "voc": (VOC, ("use_sbd", "unknown_labels")),
    "ade20k": (ADE20K, ("unknown_labels",)),
    "camvid": (CamVid, ("unknown_labels",)),
}


def get_dataset(
    name: str, root: str | None, split: str, transform: Callable[..., Any] | None = None, **options: Any
) -> SegmentationDataset:
    """The dataset `name` (split `split`), with items `transform(image, label)` when a transform is given."""
    if name == "synthetic":
        _check_options(name, options, SYNTHETIC_OPTIONS)
        dataset: SegmentationDataset = SyntheticSegmentation(split=split, **options)
    elif name in ON_DISK:
        factory, accepted = ON_DISK[name]
        _check_options(name, options, accepted)
        dataset = factory(root, split, **options)
    else:
        raise UserError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}", key="data.name")
    return TransformedDataset(dataset, transform) if transform is not None else dataset


def _check_options(name: str, options: dict[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"unknown option {unknown[0]!r} for the {name} dataset; accepted: {', '.join(accepted) or 'none'}",
            key=f"data.{unknown[0]}",
        )


__all__ = [
    "ADE20K",
    "DATASETS",
    "VOC",
    "CamVid",
    "Cityscapes",
    "IGNORE_INDEX",
    "SegmentationDataset",
    "SyntheticSegmentation",
    "TransformedDataset",
    "get_dataset",
]
