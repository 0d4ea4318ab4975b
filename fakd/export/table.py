"""The ablation table of a study: one row per (student, arm, budget), statistics over the retrained runs.

Every statistic comes from `fakd.export.stats`. A row's runs are its COMPLETE retrain trials with a finite
final validation mIoU; each run is identified by (selection repeat, seed). An arm with a base arm in the
study is compared with it per student and budget by the paired t-test over the runs both have (same repeat,
same seed), and the p-values of all of a study's comparisons are Holm-adjusted together.

With K > 1 selection repeats (`search.selection_repeats`) the pairs of one repeat share its selected
configurations, so the paired interval describes seed noise given the selections; the stability columns
(`repeat_sd` against `seed_sd`) show how much the selection itself moves the result. With K == 1 the
stability columns are absent.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fakd.export.stats import compare_paired, holm, mean_ci
from fakd.results import COMPLETE, FAILED, StudyDir, TrialRecord, read_trials
from fakd.results.sequential import Verdict
from fakd.results.verdicts import sequential_rule, study_verdicts, table_comparisons, table_rule
from fakd.spec import StudySpec
from fakd.vocab import BUDGETS, DEFAULT_BUDGET, METRIC, arm_named

__all__ = ["ALPHA", "AblationTable", "POWER", "TARGET_DELTA", "build_table", "mean_ci"]

ALPHA, POWER, TARGET_DELTA = 0.05, 0.8, 0.01
"""Test level, power and the mIoU difference (a fraction: 0.01 is 1 mIoU point) of the power analysis."""
KEYS = ["student", "arm", "budget", "n", "miou_mean", "miou_ci_low", "miou_ci_high"]
STABILITY = ["repeats", "repeat_sd", "seed_sd"]
COMPARISON = ["base_arm", "paired_n", "delta_vs_base", "delta_ci_low", "delta_ci_high", "delta_sd", "p_value",
              "p_holm", "mde", "seeds_needed", "decision", "decided_at", "delta_cs_low", "delta_cs_high"]
COUNTS = ["n", "repeats", "paired_n", "seeds_needed", "decided_at", "diverged"]

Run = tuple[int, int]  # (selection repeat, seed)
Group = tuple[str, str, str]  # (student, arm, budget)


@dataclass(frozen=True)
class AblationTable:
    """The table (teacher row first) and what the note and the compact rendering need to know about it.

    frame columns: student, arm, budget, n, miou_mean, miou_ci_low, miou_ci_high, [repeats, repeat_sd,
    seed_sd when repeats > 1], base_arm, paired_n, delta_vs_base, delta_ci_low, delta_ci_high, delta_sd,
    p_value, p_holm, mde, seeds_needed, decision, decided_at, delta_cs_low, delta_cs_high, effective_batch,
    <unit>_hours, retrain_<unit>_hours, diverged, iou_<class>... Scores, deltas, SDs and MDEs are mIoU
    fractions. decision, decided_at: the anytime-valid verdict of the comparison and the pairs it was reached at;
    delta_cs_*: its confidence sequence at that point (`fakd.results.verdicts`). effective_batch is train.batch_size ×
    train.accumulate × resources.workers of the row's retrain runs ("8/16" when they differ, empty when not
    recorded); hours count every worker of a data-parallel trial.
    batches: (batch_size, accumulate) of each (student, arm, budget)'s retrain runs; workers: processes per trial.
    sequential: the seed count was not fixed in advance (a sequential retrain, or seeds raised after a retrain
    had finished), so the fixed-n p-values and intervals do not apply and the verdicts do; seeds_raised: the
    latter. method: the line that names the decision method.
    """

    frame: pd.DataFrame
    missing: int
    expected: int
    hours_column: str
    repeats: int = 1
    budgets: tuple[str, ...] = (DEFAULT_BUDGET,)
    class_names: tuple[str, ...] = ()
    batches: Mapping[Group, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    workers: int = 1
    sequential: bool = False
    seeds_raised: bool = False
    method: str = ""
    out_of_memory: tuple[str, ...] = ()


def budget_of(record: TrialRecord) -> str:
    """The retrain budget of a record (records written before budgets existed were equal-iters)."""
    return record.budget or DEFAULT_BUDGET


def batch_of(record: TrialRecord) -> tuple[int, int] | None:
    """(train.batch_size, train.accumulate) of a record's run (accumulate 1 where older records lack it);
    None where the run does not record its batch size."""
    size = record.train_setting("batch_size")
    if size is None:
        return None
    return int(size), int(record.train_setting("accumulate") or 1)


def effective_batch(pairs: tuple[tuple[int, int], ...], workers: int = 1) -> int | str | None:
    """The effective batch (batch_size × accumulate × workers) of a row's runs: one number, "8/16" where they
    differ."""
    sizes = sorted({size * accumulate * workers for size, accumulate in pairs})
    if not sizes:
        return None
    return sizes[0] if len(sizes) == 1 else "/".join(str(size) for size in sizes)


def build_table(study: StudyDir, spec: StudySpec | None = None,
                records: list[TrialRecord] | None = None) -> AblationTable:
    """The table of a study directory, from its records and metadata alone (no data, no Ray)."""
    spec = spec or study.read_spec()
    records = read_trials(study) if records is None else records
    meta = study.metadata()
    class_names = [str(name) for name in meta.get("data", {}).get("class_names", [])]
    resources = spec.settings.resources
    hours_column = f"{resources.device}_hours"
    per_unit = resources.units_per_trial
    retrain = [r for r in records if r.phase == "retrain"]
    repeats = max([spec.settings.search.selection_repeats] + [r.repeat + 1 for r in records])
    found = {budget_of(r) for r in retrain}
    budgets = tuple(sorted(found, key=lambda b: (BUDGETS.index(b) if b in BUDGETS else len(BUDGETS), b)))
    budgets = budgets or (DEFAULT_BUDGET,)

    search_seconds: dict[tuple[str, str], float] = defaultdict(float)
    search_diverged: dict[tuple[str, str], int] = defaultdict(int)
    retrain_seconds: dict[Group, float] = defaultdict(float)
    retrain_diverged: dict[Group, int] = defaultdict(int)
    scores: dict[Group, dict[Run, float]] = defaultdict(dict)
    ious: dict[Group, list[list[float]]] = defaultdict(list)
    batches: dict[Group, set[tuple[int, int]]] = defaultdict(set)
    for record in records:
        if record.phase != "retrain":
            search_seconds[(record.student, record.arm)] += record.seconds
            search_diverged[(record.student, record.arm)] += record.diverged
            continue
        group = (record.student, record.arm, budget_of(record))
        retrain_seconds[group] += record.seconds
        retrain_diverged[group] += record.diverged
        if (batch := batch_of(record)) is not None:
            batches[group].add(batch)
        if record.state == COMPLETE and record.final_miou is not None:
            scores[group][(record.repeat, record.seed)] = record.final_miou
            iou = record.last.get("val_iou") if record.last else None
            if isinstance(iou, list) and len(iou) == len(class_names):
                ious[group].append(iou)

    students = sorted({r.student for r in records} or {spec.defaults.student.backbone})
    found = study_verdicts(spec, records, table_comparisons(spec, records), table_rule(spec, meta, records))
    rows: list[dict[str, Any]] = []
    for student in students:
        for budget in budgets:
            for arm in spec.settings.arms:
                group = (student, arm, budget)
                mean, low, high = mean_ci(scores[group].values())
                row: dict[str, Any] = {"student": student, "arm": arm, "budget": budget, "n": len(scores[group]),
                                       "miou_mean": mean, "miou_ci_low": low, "miou_ci_high": high}
                if repeats > 1:
                    row.update(_stability(scores[group]))
                base = arm_named(arm).base
                if base in spec.settings.arms:
                    row.update(_comparison(base, scores[group], scores[(student, base, budget)]))
                    row.update(_verdict(found.verdicts[group]))
                row["effective_batch"] = effective_batch(tuple(batches[group]), resources.workers)
                seconds = search_seconds[(student, arm)] + retrain_seconds[group]
                row[hours_column] = seconds * per_unit / 3600
                row[f"retrain_{hours_column}"] = retrain_seconds[group] * per_unit / 3600
                row["diverged"] = search_diverged[(student, arm)] + retrain_diverged[group]
                row.update(_per_class(ious[group], class_names))
                rows.append(row)
    adjusted = holm([row["p_value"] for row in rows if "p_value" in row])
    for row, p_holm in zip((row for row in rows if "p_value" in row), adjusted, strict=True):
        row["p_holm"] = p_holm

    columns = KEYS + (STABILITY if repeats > 1 else []) + COMPARISON + ["effective_batch"]
    columns += [hours_column, f"retrain_{hours_column}", "diverged"] + [f"iou_{name}" for name in class_names]
    frame = pd.DataFrame([_teacher_row(spec, meta, class_names), *rows], columns=columns)
    for column in COUNTS:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    if not any(isinstance(value, str) for value in frame["effective_batch"]):
        frame["effective_batch"] = frame["effective_batch"].astype("Int64")
    done = sum(len(runs) for runs in scores.values())
    failed = sum(r.state == FAILED for r in retrain)
    raised = bool(meta.get("seeds_raised"))
    return AblationTable(frame, max(0, len(retrain) - done - failed), len(retrain), hours_column, repeats, budgets,
                         tuple(class_names), {group: tuple(sorted(pairs)) for group, pairs in batches.items()},
                         resources.workers, sequential_rule(spec, meta) is not None or raised, raised,
                         found.method(), tuple(_memory_line(r) for r in records if r.out_of_memory))


def _memory_line(record: TrialRecord) -> str:
    """`trial (batch …, crop …)` of a trial that ran out of memory (its error starts with the batch and crop)."""
    return f"{record.key} ({(record.error or '').split(':')[0]})"


def _verdict(found: Verdict) -> dict[str, Any]:
    """The sequential verdict columns of a comparison (bounds NaN while the sequence is the whole line)."""
    def bound(value: float) -> float:
        return value if math.isfinite(value) else math.nan

    return {"decision": found.decision, "decided_at": found.decided_at, "delta_cs_low": bound(found.low),
            "delta_cs_high": bound(found.high)}


def _comparison(base: str, arm_scores: Mapping[Run, float], base_scores: Mapping[Run, float]) -> dict[str, Any]:
    """The paired comparison columns of an arm against its base, over the (repeat, seed) runs both have."""
    index = {run: i for i, run in enumerate(sorted(set(arm_scores) | set(base_scores)))}
    result = compare_paired({index[r]: v for r, v in arm_scores.items()},
                            {index[r]: v for r, v in base_scores.items()},
                            alpha=ALPHA, power=POWER, target_delta=TARGET_DELTA)
    return {"base_arm": base, "paired_n": result.n_pairs, "delta_vs_base": result.delta,
            "delta_ci_low": result.ci_low, "delta_ci_high": result.ci_high, "delta_sd": result.sd,
            "p_value": result.p_value, "mde": result.mde, "seeds_needed": result.seeds_needed}


def _stability(scores: Mapping[Run, float]) -> dict[str, Any]:
    """Selection stability: the SD of the per-repeat mean scores (across repeats) and the mean within-repeat
    SD (across training seeds); NaN where fewer than two repeats, or no repeat with two seeds, have runs."""
    by_repeat: dict[int, list[float]] = defaultdict(list)
    for (repeat, _), value in scores.items():
        by_repeat[repeat].append(value)
    means = [float(np.mean(values)) for values in by_repeat.values()]
    within = [float(np.std(values, ddof=1)) for values in by_repeat.values() if len(values) >= 2]
    return {"repeats": len(by_repeat), "repeat_sd": float(np.std(means, ddof=1)) if len(means) >= 2 else math.nan,
            "seed_sd": float(np.mean(within)) if within else math.nan}


def _per_class(ious: list[list[float]], class_names: list[str]) -> dict[str, float]:
    """Mean IoU of each class over the runs (NaN where a class is absent from every run's validation split)."""
    if not ious:
        return {f"iou_{name}": math.nan for name in class_names}
    matrix = np.asarray(ious, dtype=float)
    present = ~np.isnan(matrix).all(axis=0)
    means = np.full(matrix.shape[1], math.nan)
    means[present] = np.nanmean(matrix[:, present], axis=0)
    return {f"iou_{name}": float(value) for name, value in zip(class_names, means, strict=True)}


def _teacher_row(spec: StudySpec, meta: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    metrics = meta.get("teacher", {}).get("metrics", {})
    miou = metrics.get(METRIC, math.nan)
    row: dict[str, Any] = {"student": spec.defaults.teacher.label, "arm": "teacher", "budget": None,
                           "n": 1 if metrics else 0, "miou_mean": miou}
    row.update({f"iou_{n}": v for n, v in zip(class_names, metrics.get("val_iou", []), strict=False)})
    return row
