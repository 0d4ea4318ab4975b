"""The Pareto front of mIoU (higher is better) against student parameters (fewer is better)."""

from __future__ import annotations

from typing import Any

from fakd.results.records import TrialRecord
from fakd.vocab import METRIC


def _point(record: TrialRecord) -> tuple[float, int] | None:
    miou = record.final_miou
    if miou is None or record.last is None or "params" not in record.last:
        return None
    return miou, int(record.last["params"])


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Finished trials that no other finished trial beats on both mIoU and parameter count."""
    points = [(r, p) for r in records if (p := _point(r)) is not None]
    front = []
    for record, (miou, params) in points:
        dominated = any(
            m >= miou and n <= params and (m > miou or n < params) for _, (m, n) in points
        )
        if not dominated:
            front.append(record)
    return sorted(front, key=lambda r: (int(r.last["params"]), r.key))


def front_json(front: list[TrialRecord]) -> list[dict[str, Any]]:
    return [{"trial": r.key, "arm": r.arm, METRIC: r.final_miou, "params": int(r.last["params"]),
             "config": r.values} for r in front]
