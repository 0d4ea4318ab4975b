"""What a study directory holds: one record per trial, read from Ray Tune's experiment state."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fakd.spec import load_spec
from fakd.study.layout import StudyDir, open_study_dir

PHASES = ("search", "retrain")


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    arm: str
    phase: str
    status: str
    config: dict[str, Any]
    metric: float | None
    iterations: int
    path: str
    final: dict[str, Any]
    history: list[tuple[int, float]]

    def to_json(self) -> dict[str, Any]:
        """The public fields (`status --json`)."""
        return {k: v for k, v in asdict(self).items() if k not in ("final", "history")}

    @property
    def final_metric(self) -> float | None:
        value = self.final.get("val_miou")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _best(values: list[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(finite) if finite else None


def read_experiment(experiment: Path, arm: str, phase: str, metric: str) -> list[TrialRecord]:
    """Every trial of one Tune experiment directory (none if it was never started)."""
    from ray.tune import ExperimentAnalysis, Tuner

    if not Tuner.can_restore(str(experiment)):
        return []
    analysis = ExperimentAnalysis(str(experiment))
    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        values = frame[metric].tolist() if frame is not None and metric in frame else []
        history = list(zip(frame["iteration"].tolist(), frame["val_miou"].tolist(), strict=True)) if (
            frame is not None and {"iteration", "val_miou"} <= set(frame)) else []
        last = trial.last_result or {}
        config = {k: v for k, v in trial.config.items() if k != "arm"}
        config = {**config.pop("values", {}), **config}
        final = {k: last[k] for k in ("val_miou", "val_iou", "time_total_s", "iteration", "params") if k in last}
        records.append(TrialRecord(
            trial_id=trial.trial_id, arm=arm, phase=phase, status=trial.status, config=config,
            metric=_best(values), iterations=int(last.get("iteration", 0) or 0), path=str(trial.path),
            final=final, history=history,
        ))
    return records


def study_trials(study: StudyDir) -> list[TrialRecord]:
    spec = load_spec(study.spec)
    metric = spec.settings.search.metric
    records: list[TrialRecord] = []
    for phase in PHASES:
        for arm in spec.settings.arms:
            records.extend(read_experiment(study.experiment(arm, phase), arm, phase, metric))
    return records


def status(study_path: str | Path) -> list[TrialRecord]:
    return study_trials(open_study_dir(study_path))


def format_table(records: list[TrialRecord]) -> str:
    """A plain-text table, one trial a line."""
    if not records:
        return "no trials yet"
    rows = [("trial", "phase", "arm", "status", "best metric", "iters", "config")]
    for r in records:
        config = ", ".join(f"{k}={_short(v)}" for k, v in sorted(r.config.items()))
        metric = "-" if r.metric is None else f"{r.metric:.4f}"
        rows.append((r.trial_id, r.phase, r.arm, r.status, metric, str(r.iterations), config))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
                     for row in rows)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
