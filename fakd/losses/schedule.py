"""Strength schedules for the FAKD augmentation strength λ."""

from __future__ import annotations

import math
from collections.abc import Callable

from fakd.vocab import SCHEDULES

_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "cosine": lambda x: (1.0 - math.cos(math.pi * x)) / 2.0,
    "constant": lambda x: 1.0,
}
if tuple(_SHAPES) != SCHEDULES:  # pragma: no cover - a schedule named in fakd.vocab without its shape here
    raise ImportError(f"fakd.losses.schedule defines {tuple(_SHAPES)}, fakd.vocab.SCHEDULES names {SCHEDULES}")


def strength_at(step: int, total_steps: int, max_strength: float, schedule: str) -> float:
    """Return λ_t = max_strength · s(t / total_steps), with the progress clipped to [0, 1].

    ``schedule`` is one of ``linear`` (x), ``cosine`` ((1 − cos πx) / 2) or ``constant`` (1).
    A non-positive ``total_steps`` counts as a finished ramp (x = 1).
    """
    shape = _SHAPES.get(schedule)
    if shape is None:
        raise ValueError(f"unknown strength schedule {schedule!r}; accepted: {', '.join(SCHEDULES)}")
    progress = 1.0 if total_steps <= 0 else min(max(step / total_steps, 0.0), 1.0)
    return float(max_strength) * shape(progress)
