"""The ablation table of a study: one row per (student, arm), statistics over retrain seeds."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fakd.results import COMPLETE, StudyDir, TrialRecord, read_trials
from fakd.spec import StudySpec, load_spec
from fakd.vocab import ARM_TABLE

COLUMNS = ["student", "arm", "n", "miou_mean", "miou_ci_low", "miou_ci_high"]


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided Student-t confidence interval (NaN bounds for fewer than two values)."""
    if not values:
        return math.nan, math.nan, math.nan
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array)))
    return mean, mean - half, mean + half


def paired_delta(arm: dict[int, float], base: dict[int, float]) -> tuple[float, float, int]:
    """Mean of arm − base over the seeds both have, the paired t-test p-value (NaN below two pairs or with
    zero variance), and the number of pairs."""
    shared = sorted(set(arm) & set(base))
    if not shared:
        return math.nan, math.nan, 0
    ours, theirs = [arm[s] for s in shared], [base[s] for s in shared]
    delta = float(np.mean(np.subtract(ours, theirs)))
    p_value = float(stats.ttest_rel(ours, theirs).pvalue) if len(shared) >= 2 else math.nan
    return delta, p_value, len(shared)


@dataclass(frozen=True)
class AblationTable:
    frame: pd.DataFrame
    missing: int
    expected: int
    hours_column: str


def build_table(study: StudyDir, spec: StudySpec | None = None,
                records: list[TrialRecord] | None = None) -> AblationTable:
    """The table of a study directory, from its records and metadata alone (no data, no Ray)."""
    spec = spec or load_spec(study.spec)
    records = read_trials(study) if records is None else records
    meta = study.metadata()
    class_names = list(meta.get("data", {}).get("class_names", []))
    resources = spec.settings.resources
    hours_column = "gpu_hours" if resources.gpu > 0 else "cpu_hours"
    per_unit = resources.gpu if resources.gpu > 0 else resources.cpu
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    scores: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    ious: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    diverged: dict[tuple[str, str], int] = defaultdict(int)
    for record in records:
        key = (record.student, record.arm)
        seconds[key] += record.seconds
        diverged[key] += record.diverged
        if record.phase == "retrain" and record.state == COMPLETE and record.final_miou is not None:
            scores[key][record.seed] = record.final_miou
            ious[key].append(record.last.get("val_iou", []))
    planned = [r for r in records if r.phase == "retrain"]
    students = sorted({student for student, _ in seconds} or {spec.defaults.student.backbone})
    rows = [_teacher_row(spec, meta, class_names)]
    for student in students:
        for arm in spec.settings.arms:
            key = (student, arm)
            mean, low, high = mean_ci(list(scores[key].values()))
            row: dict[str, Any] = {"student": student, "arm": arm, "n": len(scores[key]), "miou_mean": mean,
                                   "miou_ci_low": low, "miou_ci_high": high}
            row.update(_per_class(ious[key], class_names))
            row[hours_column] = seconds[key] * per_unit / 3600
            row["diverged"] = diverged[key]
            base = ARM_TABLE[arm].base
            if base in spec.settings.arms:
                delta, p_value, pairs = paired_delta(scores[key], scores[(student, base)])
                row.update({"base_arm": base, "delta_vs_base": delta, "p_value": p_value, "paired_n": pairs})
            rows.append(row)
    found = sum(len(v) for v in scores.values())
    failed = sum(r.state == "FAILED" for r in planned)
    return AblationTable(pd.DataFrame(rows), max(0, len(planned) - found - failed), len(planned), hours_column)


def _per_class(ious: list[list[float]], class_names: list[str]) -> dict[str, float]:
    if not ious:
        return {f"iou_{name}": math.nan for name in class_names}
    matrix = np.asarray(ious, dtype=float)
    means = np.nanmean(matrix, axis=0) if not np.isnan(matrix).all() else matrix[0]
    return {f"iou_{name}": float(value) for name, value in zip(class_names, means, strict=False)}


def _teacher_row(spec: StudySpec, meta: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    metrics = meta.get("teacher", {}).get("metrics", {})
    miou = metrics.get("val_miou", math.nan)
    row: dict[str, Any] = {"student": spec.defaults.teacher.backbone, "arm": "teacher", "n": 1 if metrics else 0,
                           "miou_mean": miou, "miou_ci_low": math.nan, "miou_ci_high": math.nan}
    row.update({f"iou_{n}": v for n, v in zip(class_names, metrics.get("val_iou", []), strict=False)})
    return row
