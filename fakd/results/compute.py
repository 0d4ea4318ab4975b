"""Planned against spent compute, per arm: the plan `sweep` stores (study.json `plan`) next to the wall time of the
study's own trials. `status` and the HTML report show it; read from the study directory alone.

Spent is the device-hours of an arm's trials so far (their windows' wall time × the units a trial holds). Planned
hours are the plan's iterations and evaluations priced at the arm's own measured rate in this study (seconds per
iteration, evaluation included), so they need no measurement on another machine, and are unknown until the arm
reports its first window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fakd.results.records import TrialRecord


@dataclass(frozen=True)
class ArmCompute:
    arm: str
    planned_iterations: float
    done_iterations: int
    spent_hours: float
    planned_hours: float | None  # None until the arm has a measured rate


def planned_against_spent(plan: Mapping[str, Any], records: Iterable[TrialRecord]) -> list[ArmCompute]:
    """Each planned arm's iterations and device-hours: planned (the plan's counts at the arm's measured rate)
    against done and spent."""
    units = plan.get("units_per_trial", 1)
    units = float(units) if isinstance(units, int | float) and units > 0 else 1.0
    seconds: dict[str, float] = {}
    iterations: dict[str, int] = {}
    for record in records:
        seconds[record.arm] = seconds.get(record.arm, 0.0) + record.seconds
        iterations[record.arm] = iterations.get(record.arm, 0) + record.iterations
    rows = []
    arms = plan.get("arms")
    for arm, parts in (arms.items() if isinstance(arms, dict) else ()):
        planned = _planned_iterations(parts)
        if planned is None:  # a plan edited by hand: shown for the arms it still describes
            continue
        done, spent = iterations.get(arm, 0), seconds.get(arm, 0.0)
        rate = spent / done if done else None  # seconds per iteration, its evaluations included
        rows.append(ArmCompute(arm, planned, done, spent * units / 3600,
                               planned * rate * units / 3600 if rate is not None else None))
    return rows


def _planned_iterations(parts: Any) -> float | None:
    """The iterations an arm's parts (search, confirm, retrain) plan, or None where they are not numbers."""
    if not isinstance(parts, dict):
        return None
    counts = [part.get("iterations") if isinstance(part, dict) else None for part in parts.values()]
    if not all(isinstance(count, int | float) and not isinstance(count, bool) for count in counts):
        return None
    return float(sum(counts))


def format_compute(plan: Mapping[str, Any], rows: list[ArmCompute]) -> list[str]:
    """One line per arm: `kd: 0.021 of 0.054 CPU-hours planned (1,200 of 3,000 iterations)`."""
    unit = f"{str(plan.get('unit', 'cpu')).upper()}-hours"
    lines = []
    for row in rows:
        planned = "?" if row.planned_hours is None else f"{row.planned_hours:.3g}"
        lines.append(f"{row.arm}: {row.spent_hours:.3g} of {planned} {unit} planned "
                     f"({row.done_iterations:,} of {row.planned_iterations:,.0f} iterations)")
    return lines
