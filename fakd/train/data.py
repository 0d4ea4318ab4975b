"""Splits and loaders for a run: search runs hold out part of the training split, final runs use val."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from fakd.config import DataConfig, RunConfig
from fakd.data import get_dataset
from fakd.data.transforms import EvalTransform, IterationSampler, SampleKey, TrainSampleView, TrainTransform
from fakd.errors import UserError
from fakd.train.distributed import DistContext


class IndexedSubset(Dataset):
    """A subset that keeps the dataset's class metadata."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.num_classes = dataset.num_classes
        self.class_names = dataset.class_names

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
    if cfg.split == "holdout":
        keep, held = holdout_indices(len(full_train), cfg.data.holdout_fraction, cfg.data.seed)
        train, evaluation = IndexedSubset(full_train, keep), IndexedSubset(full_train, held)
    else:
        train, evaluation = full_train, open_dataset(cfg.data, "val")
    return Splits(train, evaluation, full_train.num_classes, list(full_train.class_names))


class Loader(DataLoader):
    """A DataLoader whose worker processes' `UserError`s (an unreadable image, a label outside the table) arrive as the
    one line they were: torch re-raises an error of a worker as the same type around the worker's whole traceback."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UserError as exc:
                # torch's traceback holds its iterator in a reference cycle: dropped with our last reference, the
                # workers stop now; left to the garbage collector, each worker's join waits out a 5 s timeout
                error = _unwrapped(exc.with_traceback(None))
                break
            yield batch
        del batches
        raise error from None


def _unwrapped(error: UserError) -> UserError:
    """The worker's own one-line error out of torch's "Caught UserError in DataLoader worker ..." text."""
    if error.file or error.key or "DataLoader worker" not in error.message:
        return error
    last = error.message.strip().splitlines()[-1]
    return UserError(last.split("UserError: ", 1)[-1])


class RankSlice(Sampler[list[SampleKey]]):
    """Process `rank`'s part of every global batch of `batches`: its `rank`-th run of len(batch) / world_size
    consecutive keys (the global batch size is a multiple of the world size)."""

    def __init__(self, batches: IterationSampler, rank: int, world_size: int) -> None:
        if batches.batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f"cannot give rank {rank} of {world_size} an equal part of batches of "
                             f"{batches.batch_size}")
        self.batches, self.rank, self.size = batches, rank, batches.batch_size // world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for batch in self.batches:
            yield batch[self.rank * self.size : (self.rank + 1) * self.size]


def train_loader(
    cfg: RunConfig, dataset: Any, total_iters: int, start_iteration: int, dist: DistContext | None = None
) -> DataLoader:
    """Batches of `train.batch_size` for iterations [start, total): batch i is a pure function of (seed, i). With
    gradient accumulation the trainer asks for micro-batches: step s uses batches s·accumulate … s·accumulate + a − 1,
    which hold exactly the samples of step s with accumulate 1 and batch size batch_size·accumulate.

    Data-parallel (`dist` of W processes): global batch i holds batch_size·W samples, a pure function of (seed, i)
    as above, and process r takes its r-th consecutive slice of batch_size; so W processes × batch b see exactly the
    samples of one process × batch W·b, and a resumed run (with the same W) continues the same stream."""
    world = dist.world_size if dist is not None else 1
    transform = TrainTransform(cfg.data.crop_size, scale_range=cfg.data.scale_range)
    view = TrainSampleView(dataset, transform, seed=cfg.train.seed)
    sampler = IterationSampler(
        len(dataset), cfg.train.batch_size * world, cfg.train.seed, start_iteration=start_iteration,
        total_iterations=total_iters,
    )
    batches = RankSlice(sampler, dist.rank, world) if dist is not None and world > 1 else sampler
    return Loader(
        view, batch_sampler=batches, num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.train.seed), persistent_workers=False,
    )


class _Transformed(Dataset):
    def __init__(self, dataset: Any, transform: EvalTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.transform(*self.dataset[i])


def eval_loader(cfg: RunConfig, dataset: Any, dist: DistContext | None = None) -> DataLoader:
    """Whole images in order; real datasets have images of several sizes, so they go one at a time. Data-parallel
    (`dist` of W processes), process r evaluates images r, r + W, r + 2W, …: together the whole split once."""
    batch_size = cfg.train.eval_batch_size if cfg.data.name == "synthetic" else 1
    if dist is not None and dist.distributed:
        dataset = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    return Loader(
        _Transformed(dataset, EvalTransform()), batch_size=batch_size, shuffle=False,
        num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(0),
    )
