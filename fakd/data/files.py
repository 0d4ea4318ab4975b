"""Datasets of (image file, label file) pairs on disk: layout checks, listing and decoding."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fakd.data.base import IGNORE_INDEX, Sample, SegmentationDataset
from fakd.errors import UserError

LABEL_MODES = ("L", "P")  # 8-bit grey values or palette indices: both are class values as stored
SHOWN_ENTRIES = 8
UNKNOWN = -1  # lookup-table entry of a stored value outside the dataset's label table
UNKNOWN_LABELS = ("error", "ignore")  # what reading such a value does
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


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


def lookup_table(mapping: dict[int, int], ignored: Iterable[int] = ()) -> np.ndarray:
    """A 256-entry int64 table: stored label value -> training id (`mapping`), 255 for the `ignored` values,
    UNKNOWN for every other value."""
    table = np.full(256, UNKNOWN, dtype=np.int64)
    table[list(ignored)] = IGNORE_INDEX
    for value, train_id in mapping.items():
        table[value] = train_id
    return table


def reading_table(table: np.ndarray, unknown_labels: str) -> np.ndarray:
    """The table a dataset decodes with: unknown values stay UNKNOWN (an error when read) or become ignore."""
    if unknown_labels not in UNKNOWN_LABELS:
        raise UserError(
            f"unknown_labels must be one of {', '.join(UNKNOWN_LABELS)}, got {unknown_labels!r}",
            key="data.unknown_labels",
        )
    return table if unknown_labels == "error" else np.where(table == UNKNOWN, IGNORE_INDEX, table)


def value_ranges(values: Iterable[int]) -> str:
    """Sorted integers as compact ranges: `0-33, 255`."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


@contextlib.contextmanager
def decoding(path: Path, what: str) -> Iterator[None]:
    """Turn a decoder failure while reading `path` into a UserError (key data.root) naming the file."""
    try:
        yield
    except DECODE_ERRORS as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, UnidentifiedImageError):
            reason = "not in an image format PIL recognises"
        raise UserError(
            f"cannot read {what} {path}: {reason} (unreadable, truncated or not an image)", key="data.root"
        ) from None


def load_image(path: Path) -> torch.Tensor:
    """uint8 3 x H x W."""
    with decoding(path, "image file"), Image.open(path) as image:
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_label(path: Path, table: np.ndarray, dataset: str = "dataset") -> torch.Tensor:
    """int64 H x W training ids of a single-channel label PNG (grey values or palette indices, never colours).

    A value whose `table` entry is UNKNOWN is a UserError naming the file, the values and the accepted ones.
    """
    with decoding(path, "label file"), Image.open(path) as image:
        if image.mode not in LABEL_MODES:
            raise UserError(
                f"label file {path} has mode {image.mode}; expected a single-channel PNG of class values "
                f"(mode {' or '.join(LABEL_MODES)})",
                key="data.root",
            )
        values = np.array(image)
    ids = table[values]
    if ids.size and ids.min() == UNKNOWN:
        raise _unknown_values(path, values[ids == UNKNOWN], table, dataset)
    return torch.from_numpy(ids)


def _unknown_values(path: Path, found: np.ndarray, table: np.ndarray, dataset: str) -> UserError:
    unknown = np.unique(found).tolist()
    more = f" (+{len(unknown) - SHOWN_ENTRIES} more)" if len(unknown) > SHOWN_ENTRIES else ""
    shown = ", ".join(map(str, unknown[:SHOWN_ENTRIES])) + more
    accepted = value_ranges(np.flatnonzero(table != UNKNOWN).tolist())
    return UserError(
        f"label file {path} holds values outside the {dataset} label table: {shown} (accepted: {accepted}); "
        "fix the file or set data.unknown_labels: ignore to read such values as ignore (255)",
        key="data.root",
    )


class FileSegmentation(SegmentationDataset):
    """Items decoded from a fixed, sorted list of (image, label) files; labels mapped by a lookup table.

    `unknown_labels` says what a stored value outside the table does: "error" (a UserError naming the file)
    or "ignore" (read as 255).
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        table: np.ndarray,
        class_names: Sequence[str],
        *,
        dataset: str,
        unknown_labels: str = "error",
    ) -> None:
        self.pairs = pairs
        self.table = reading_table(table, unknown_labels)
        self.dataset, self.unknown_labels = dataset, unknown_labels
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image, label = load_image(image_path), load_label(label_path, self.table, self.dataset)
        if image.shape[1:] != label.shape:
            raise UserError(
                f"image {image_path} is {tuple(image.shape[1:])} but its label {label_path} is {tuple(label.shape)}",
                key="data.root",
            )
        return image, label
