"""The Pareto front of mIoU (higher is better) against student parameters (fewer is better)."""

from __future__ import annotations

from typing import Any

from fakd.study.status import TrialRecord


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Finished trials that no other trial beats on both mIoU and parameter count."""
    points = [r for r in records if r.final_metric is not None and "params" in r.final]
    front = []
    for r in points:
        dominated = any(
            o.final_metric >= r.final_metric and o.final["params"] <= r.final["params"]
            and (o.final_metric > r.final_metric or o.final["params"] < r.final["params"])
            for o in points
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.final["params"])


def front_json(front: list[TrialRecord]) -> list[dict[str, Any]]:
    return [{"trial_id": r.trial_id, "arm": r.arm, "val_miou": r.final_metric, "params": r.final["params"],
             "config": r.config} for r in front]
