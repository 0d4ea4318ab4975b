"""A procedural segmentation dataset where a pixel's class needs both local texture and region shape.

Class 0 is a smooth, cloudy background. Each object class is a (shape, texture) pair laid out so that
every shape and every texture is shared by several classes: neither cue alone decides the class, so a
model must combine the texture under a pixel with the shape of the region around it (receptive field).
Colour is not a cue (random tint and brightness per instance). Images are a pure function of
(seed, split, index).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fakd.data.base import IGNORE_INDEX, Sample, SegmentationDataset
from fakd.errors import UserError

SHAPES = ("disc", "ring", "cross", "triangle", "square", "ellipse")
BASE_TEXTURES = ("grating-h", "checker", "dots", "grating-v", "noise", "grating-d")
SPLITS = {"train": 0, "val": 1, "test": 2}
MAX_CLASSES = IGNORE_INDEX  # ids 0..254; 255 is the ignore label

_GRATING_ANGLES = {"grating-h": 90.0, "grating-v": 0.0, "grating-d": 45.0}  # wave-vector angle, degrees


def texture_names(count: int) -> list[str]:
    """The first `count` textures; past the base set, extra gratings at angles in (0, 90) other than 45.

    Angles stay in (0, 90) so a horizontal flip never turns one texture into another.
    """
    names = list(BASE_TEXTURES[:count])
    extra = count - len(names)
    if extra > 0:
        angles = [90.0 * (j + 1) / (extra + 2) for j in range(extra + 1)]
        angles.remove(min(angles, key=lambda a: abs(a - 45.0)))
        names += [f"grating-{a:.1f}" for a in angles]
    return names


def class_pairs(num_object_classes: int) -> list[tuple[str, str]]:
    """(shape, texture) per object class: a near-square grid filled along wrapped diagonals."""
    shapes = min(len(SHAPES), math.ceil(math.sqrt(num_object_classes)))
    textures = math.ceil(num_object_classes / shapes)
    names = texture_names(textures)
    return [(SHAPES[i % shapes], names[(i % shapes + i // shapes) % textures]) for i in range(num_object_classes)]


class SyntheticSegmentation(SegmentationDataset):
    """Deterministic procedural images: textured shapes on a cloudy background."""

    objects_per_image = (2, 4)  # inclusive range of instances drawn per image
    radius_range = (0.15, 0.3)  # instance radius as a fraction of the shorter image side

    def __init__(
        self,
        num_classes: int = 8,
        image_size: int | tuple[int, int] = 64,
        length: int = 512,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        self.num_classes = _check_int("num_classes", num_classes, 2, MAX_CLASSES)
        self.image_size = _check_size(image_size)
        self.length = _check_int("length", length, 1)
        self.seed = _check_int("seed", seed, 0)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}", key="split")
        self.split = split
        self.pairs = class_pairs(self.num_classes - 1)
        self.class_names = ["background"] + [f"{shape}/{texture}" for shape, texture in self.pairs]
        height, width = self.image_size
        self.period = max(6.0, min(height, width) / 8)
        self._rows, self._cols = np.mgrid[0:height, 0:width].astype(np.float32)
        self._smooth_rows = _interpolation_matrix(height, 5)
        self._smooth_cols = _interpolation_matrix(width, 5)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        image, label = self.generate(index)
        return torch.from_numpy(image), torch.from_numpy(label)

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 3 x H x W image, int64 H x W label) for one index, as numpy arrays."""
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        height, width = self.image_size
        image = self._background(rng)
        label = np.zeros((height, width), dtype=np.int64)
        size = min(height, width)
        low, high = self.objects_per_image
        for _ in range(int(rng.integers(low, high + 1))):
            class_id = int(rng.integers(1, self.num_classes))
            self._draw_object(rng, image, label, class_id, radius=float(rng.uniform(*self.radius_range)) * size)
        image += rng.standard_normal(image.shape, dtype=np.float32) * 0.03
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), label

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        nodes = rng.uniform(0.15, 0.85, size=(3, 5, 5)).astype(np.float32)
        return np.einsum("ij,cjk,lk->cil", self._smooth_rows, nodes, self._smooth_cols).astype(np.float32)

    def _draw_object(
        self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, class_id: int, radius: float
    ) -> None:
        height, width = label.shape
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0, 2 * math.pi)
        shape, texture = self.pairs[class_id - 1]
        reach = 1.3 * radius
        top, bottom = max(0, int(cy - reach)), min(height, int(math.ceil(cy + reach)) + 1)
        left, right = max(0, int(cx - reach)), min(width, int(math.ceil(cx + reach)) + 1)
        window = np.s_[top:bottom, left:right]
        rows, cols = self._rows[window], self._cols[window]
        cos, sin = math.cos(angle), math.sin(angle)
        du, dv = cols - cx, rows - cy
        mask = _SHAPE_MASKS[shape](du * cos + dv * sin, dv * cos - du * sin, radius)
        if not mask.any():
            return
        pattern = _texture(texture, rows, cols, self.period, rng)
        value = rng.uniform(0.35, 0.65) + rng.uniform(0.5, 0.9) * (pattern - 0.5)
        tint = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
        tint /= tint.max()
        patch = image[(slice(None), *window)]
        patch[:, mask] = tint[:, None] * value[mask][None, :]
        label[window][mask] = class_id


def _interpolation_matrix(length: int, nodes: int) -> np.ndarray:
    """length x nodes linear-interpolation weights spreading `nodes` control points over `length` pixels."""
    position = np.linspace(0, nodes - 1, length)
    low = np.minimum(np.floor(position).astype(int), nodes - 2)
    frac = position - low
    matrix = np.zeros((length, nodes), dtype=np.float32)
    matrix[np.arange(length), low] = 1 - frac
    matrix[np.arange(length), low + 1] = frac
    return matrix


def _disc(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return u * u + v * v <= r * r


def _square(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r


def _triangle(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    inradius = 0.625 * r  # circumradius 1.25 r
    mask = np.ones(u.shape, dtype=bool)
    for k in range(3):
        normal = math.pi / 2 + 2 * math.pi * k / 3
        mask &= u * math.cos(normal) + v * math.sin(normal) <= inradius
    return mask


def _ring(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    squared = u * u + v * v
    return (squared <= r * r) & (squared >= (0.55 * r) ** 2)


def _cross(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    arm = 0.3 * r
    return ((au <= arm) & (av <= r)) | ((av <= arm) & (au <= r))


def _ellipse(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return (u / r) ** 2 + (v / (0.5 * r)) ** 2 <= 1.0


_SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "ring": _ring,
    "cross": _cross,
    "ellipse": _ellipse,
}


def _texture(name: str, rows: np.ndarray, cols: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] over the given pixel coordinates, with a random phase."""
    oy, ox = (float(v) for v in rng.uniform(0, period, size=2))
    if name == "checker":
        cell = period / 2
        return ((np.floor((rows + oy) / cell) + np.floor((cols + ox) / cell)) % 2).astype(np.float32)
    if name == "dots":
        dy, dx = (rows + oy) % period - period / 2, (cols + ox) % period - period / 2
        return (dy * dy + dx * dx <= (0.3 * period) ** 2).astype(np.float32)
    if name == "noise":
        blocks = rng.random((rows.shape[0] // 2 + 1, rows.shape[1] // 2 + 1), dtype=np.float32)
        return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[: rows.shape[0], : rows.shape[1]]
    degrees = _GRATING_ANGLES.get(name)
    if degrees is None:
        degrees = float(name.removeprefix("grating-"))
    theta = math.radians(degrees)
    phase = (cols * math.cos(theta) + rows * math.sin(theta) + ox) * (2 * math.pi / period)
    return 0.5 + 0.5 * np.sin(phase)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}", key=f"data.{name}")
    if high is not None and value > high:
        raise UserError(f"{name} must be at most {high}, got {value}", key=f"data.{name}")
    return int(value)


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else size
    try:
        height, width = pair  # type: ignore[misc]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 16 for v in (height, width)):
            return int(height), int(width)
    except (TypeError, ValueError):
        pass
    raise UserError(
        f"image_size must be an integer >= 16 or a [height, width] pair of them, got {size!r}",
        key="data.image_size",
    )
