"""Datasets of (image file, label file) pairs on disk: layout checks, listing and decoding."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fakd.data.base import IGNORE_INDEX, Sample, SegmentationDataset
from fakd.errors import UserError

LABEL_MODES = ("L", "P")  # 8-bit grey values or palette indices: both are class values as stored
SHOWN_ENTRIES = 8


def check_split(dataset: str, split: str, splits: Sequence[str]) -> None:
    """A UserError (key data.split) unless `split` is one the dataset has labels for."""
    if split not in splits:
        raise UserError(
            f"unknown split {split!r} for the {dataset} dataset; accepted: {', '.join(splits)}", key="data.split"
        )


def check_root(dataset: str, root: str | Path | None, layout: str) -> Path:
    """The root as a Path; a UserError (key data.root) naming the expected layout when it is not a directory."""
    if root is None or str(root) == "":
        raise UserError(f"the {dataset} dataset needs a root directory ({layout})", key="data.root")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{dataset} root does not exist or is not a directory: {path} ({layout})", key="data.root")
    return path


def top_entries(root: Path) -> str:
    """The first few top-level entries of `root`, for error messages."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not names:
        return "root is empty"
    more = f" (+{len(names) - SHOWN_ENTRIES} more)" if len(names) > SHOWN_ENTRIES else ""
    return f"root holds {', '.join(names[:SHOWN_ENTRIES])}{more}"


def layout_error(dataset: str, root: Path, split: str, layout: str, found: str) -> UserError:
    """The error for a root that does not match a dataset's layout."""
    return UserError(
        f"no {dataset} images for split {split!r} under {root}: expected {layout}; found {found}; {top_entries(root)}",
        key="data.root",
    )


def read_ids(path: Path) -> list[str]:
    """The image ids of a split list: one id per line, or DeepLab-style `/JPEGImages/<id>.jpg <label path>` lines."""
    return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


def pair_labels(dataset: str, images: Iterable[Path], label_of: Callable[[Path], Path]) -> list[tuple[Path, Path]]:
    """(image, label) pairs; a UserError naming the first image whose label file is missing."""
    pairs = [(image, label_of(image)) for image in images]
    for image, label in pairs:
        if not label.is_file():
            raise UserError(f"{dataset} image {image} has no label file (expected {label})", key="data.root")
    return pairs


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry int64 table: stored label value -> training id, 255 (ignore) where `mapping` has none."""
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for value, train_id in mapping.items():
        table[value] = train_id
    return table


def load_image(path: Path) -> torch.Tensor:
    """uint8 3 x H x W."""
    with Image.open(path) as image:
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_label(path: Path, table: np.ndarray) -> torch.Tensor:
    """int64 H x W training ids of a single-channel label PNG (grey values or palette indices, never colours)."""
    with Image.open(path) as image:
        if image.mode not in LABEL_MODES:
            raise UserError(
                f"label file {path} has mode {image.mode}; expected a single-channel PNG of class values "
                f"(mode {' or '.join(LABEL_MODES)})",
                key="data.root",
            )
        values = np.array(image)
    return torch.from_numpy(table[values])


class FileSegmentation(SegmentationDataset):
    """Items decoded from a fixed, sorted list of (image, label) files; labels mapped by a lookup table."""

    def __init__(self, pairs: list[tuple[Path, Path]], table: np.ndarray, class_names: Sequence[str]) -> None:
        self.pairs = pairs
        self.table = table
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image, label = load_image(image_path), load_label(label_path, self.table)
        if image.shape[1:] != label.shape:
            raise UserError(
                f"image {image_path} is {tuple(image.shape[1:])} but its label {label_path} is {tuple(label.shape)}",
                key="data.root",
            )
        return image, label
