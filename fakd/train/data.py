"""Splits and loaders for a run: search runs hold out part of the training split, final runs use val."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from fakd.config import DataConfig, RunConfig
from fakd.data import get_dataset
from fakd.data.transforms import EvalTransform, IterationSampler, TrainSampleView, TrainTransform


class IndexedSubset(Dataset):
    """A subset that keeps the dataset's class metadata."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.num_classes = dataset.num_classes
        self.class_names = dataset.class_names
        self.ignore_index = getattr(dataset, "ignore_index", 255)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]


@dataclass(frozen=True)
class Splits:
    train: Any
    evaluation: Any
    num_classes: int
    class_names: list[str]


def open_dataset(cfg: DataConfig, split: str) -> Any:
    """One split of the configured dataset (its layout is checked as it opens)."""
    options: dict[str, Any] = {}
    if cfg.name == "synthetic":
        length = cfg.train_length if split == "train" else cfg.val_length
        options = {"num_classes": cfg.num_classes, "image_size": cfg.crop_size, "length": length, "seed": cfg.seed}
    else:  # on disk
        options = {"unknown_labels": cfg.unknown_labels, **({"use_sbd": cfg.use_sbd} if cfg.name == "voc" else {})}
    return get_dataset(cfg.name, cfg.root, split, **options)


def holdout_indices(length: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of `range(length)` into (kept for training, held out for model selection)."""
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, round(length * fraction))
    return sorted(order[held:]), sorted(order[:held])


def build_splits(cfg: RunConfig) -> Splits:
    full_train = open_dataset(cfg.data, "train")
    if cfg.phase == "search":
        keep, held = holdout_indices(len(full_train), cfg.data.holdout_fraction, cfg.data.seed)
        train, evaluation = IndexedSubset(full_train, keep), IndexedSubset(full_train, held)
    else:
        train, evaluation = full_train, open_dataset(cfg.data, "val")
    return Splits(train, evaluation, full_train.num_classes, list(full_train.class_names))


def train_loader(cfg: RunConfig, dataset: Any, total_iters: int, start_iteration: int) -> DataLoader:
    """Batches of `train.batch_size` for iterations [start, total): batch i is a pure function of (seed, i). With
    gradient accumulation the trainer asks for micro-batches: step s uses batches s·accumulate … s·accumulate + a − 1,
    which hold exactly the samples of step s with accumulate 1 and batch size batch_size·accumulate."""
    transform = TrainTransform(cfg.data.crop_size, scale_range=cfg.data.scale_range)
    view = TrainSampleView(dataset, transform, seed=cfg.train.seed)
    sampler = IterationSampler(
        len(dataset), cfg.train.batch_size, cfg.train.seed, start_iteration=start_iteration,
        total_iterations=total_iters,
    )
    return DataLoader(
        view, batch_sampler=sampler, num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.train.seed), persistent_workers=False,
    )


class _Transformed(Dataset):
    def __init__(self, dataset: Any, transform: EvalTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.transform(*self.dataset[i])


def eval_loader(cfg: RunConfig, dataset: Any) -> DataLoader:
    """Whole images in order; real datasets have images of several sizes, so they go one at a time."""
    batch_size = cfg.train.eval_batch_size if cfg.data.name == "synthetic" else 1
    return DataLoader(
        _Transformed(dataset, EvalTransform()), batch_size=batch_size, shuffle=False,
        num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(0),
    )
