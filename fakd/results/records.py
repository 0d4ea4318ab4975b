"""Trial records: the study's own account of every trial, the single source of truth for resume and export.

The driver writes them (one writer: it holds the study lock); `status`, `export` and resume read them.
A record is `trial.json` (what the trial is and how it ended, replaced atomically) plus `results.jsonl`
(one line per evaluation, appended and flushed). A torn last line from a crash is skipped, and a row that
repeats an iteration (a trial resumed from its checkpoint reports it again) replaces the earlier one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fakd.errors import UserError
from fakd.results.layout import StudyDir, read_json, write_json
from fakd.vocab import COMPLETE, FAILED, METRIC, PENDING

if TYPE_CHECKING:
    from fakd.config import RunConfig

PHASES = ("search", "confirm", "retrain")
OUT_OF_MEMORY = "out of memory"
"""The reason of a trial that did not fit in memory: a property of its configuration, never retried."""
TRIAL_FILE, RESULTS_FILE = "trial.json", "results.jsonl"


@dataclass
class TrialRecord:
    """One trial of a study: search (an Optuna suggestion), confirm (a top search trial again with a fresh seed,
    on the held-out split) or retrain (a selected configuration, one seed)."""

    key: str  # "search/kd_fakd-003", "retrain/kd_fakd-003-seed1": also its directory under trials/
    phase: str
    arm: str
    index: int  # search: position in the arm's budget; retrain: the seed
    values: dict[str, Any]  # the searched values (dotted keys)
    run: dict[str, Any]  # the resolved RunConfig (JSON)
    student: str
    seed: int
    state: str = PENDING
    repeat: int = 0  # selection repeat (an independent search of the arm)
    generation: int = 0  # reproducible mode: the batch of suggestions it belongs to
    optuna_number: int | None = None
    source: str | None = None  # confirm and retrain: the search trial whose configuration it trains again
    budget: str | None = None  # retrain: "equal-iters" or "equal-time"
    reason: str | None = None  # why it ended as it did (pruned at ..., diverged, out of memory, error)
    error: str | None = None  # the end of the traceback of an errored trial
    created: str | None = None
    finished: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def total_iters(self) -> int:
        return int(self.run["train"]["iters"])

    @cached_property
    def config(self) -> RunConfig:
        """The trial's resolved run configuration, typed (validated once, on first use)."""
        from fakd.config import STORED, RunConfig  # pydantic models: not loaded by the commands that only list records

        return RunConfig.model_validate(self.run, context=STORED)

    def train_setting(self, name: str) -> Any:
        """`train.<name>` of the run as recorded, or None where the record lacks it (older records): for readers
        that must not fail on an old study."""
        train = self.run.get("train") if isinstance(self.run, dict) else None
        return train.get(name) if isinstance(train, dict) else None

    @property
    def eval_every(self) -> int:
        return int(self.run["train"]["eval_every"])

    @property
    def last(self) -> dict[str, Any] | None:
        return self.results[-1] if self.results else None

    @property
    def iterations(self) -> int:
        """The last reported iteration (0 before the first evaluation)."""
        return int(self.last["iteration"]) if self.last else 0

    @property
    def diverged(self) -> bool:
        return self.state == FAILED and self.reason == "diverged"

    @property
    def out_of_memory(self) -> bool:
        return self.state == FAILED and self.reason == OUT_OF_MEMORY

    @property
    def final_miou(self) -> float | None:
        """Validation mIoU of the finished model (COMPLETE trials only)."""
        if self.state != COMPLETE or not self.last:
            return None
        return _finite(self.last.get(METRIC))

    @property
    def best_miou(self) -> float | None:
        values = [v for v in (_finite(row.get(METRIC)) for row in self.results) if v is not None]
        return max(values) if values else None

    @property
    def seconds_per_iter(self) -> float | None:
        """The measured wall time of one training iteration (teacher forward included), median over its
        evaluation windows."""
        values = sorted(v for row in self.results if (v := _finite(row.get("seconds_per_iter"))) is not None)
        return values[len(values) // 2] if values else None

    @property
    def seconds(self) -> float:
        """Wall time its evaluation windows took (training and evaluation), summed over the run."""
        return float(sum(row.get("window_seconds", 0.0) for row in self.results))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "results"}

    def status_json(self) -> dict[str, Any]:
        """What `status --json` lists: deterministic fields only (no wall times)."""
        last = self.last or {}
        return {
            "trial": self.key, "phase": self.phase, "arm": self.arm, "repeat": self.repeat, "index": self.index,
            "status": self.state, "reason": self.reason, "config": {**self.values, "seed": self.seed},
            "student": self.student, "iterations": self.iterations, "metric": self.best_miou,
            "final": {k: last[k] for k in (METRIC, "val_pixel_acc", "params") if k in last},
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialRecord:
        known = {f.name for f in fields(cls)} - {"results"}
        return cls(**{k: v for k, v in data.items() if k in known})


def evaluation_of(record: TrialRecord, iteration: int) -> int:
    """1, 2, … : which evaluation of the trial an iteration's report is."""
    return math.ceil(iteration / record.eval_every)


def learning_curve(record: TrialRecord) -> dict[int, float]:
    """The trial's reported metric by evaluation (its Optuna intermediate values)."""
    return {evaluation_of(record, int(row["iteration"])): float(row[METRIC]) for row in record.results
            if isinstance(row.get("iteration"), int) and isinstance(row.get(METRIC), (int, float))}


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def write_trial(study: StudyDir, record: TrialRecord) -> None:
    write_json(study.trial_dir(record.key) / TRIAL_FILE, record.to_json())


def append_result(study: StudyDir, key: str, row: dict[str, Any]) -> None:
    """Append one evaluation to the trial's results, flushed to disk before returning."""
    path = study.trial_dir(key) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path: Path) -> list[dict[str, Any]]:
    """Evaluations in iteration order, one per iteration (the latest report wins), torn lines skipped."""
    if not path.is_file():
        return []
    by_iteration: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("iteration"), int):
            by_iteration[row["iteration"]] = row
    return [by_iteration[i] for i in sorted(by_iteration)]


def read_trial(directory: Path) -> TrialRecord:
    """The record in `directory` (`trials/<phase>/<name>/`); one that is not a record of this very directory is
    refused, so no writer is ever pointed outside the study by a damaged or foreign file."""
    path = directory / TRIAL_FILE
    data = read_json(path, "trial record")
    try:
        if not isinstance(data, dict):
            raise TypeError(type(data).__name__)
        record = TrialRecord.from_json(data)
    except TypeError:
        raise UserError(f"{path}: not a trial record; restore it from a copy of the study, nothing was changed",
                        key="STUDY_DIR") from None
    expected = f"{directory.parent.name}/{directory.name}"
    if record.key != expected or record.phase != directory.parent.name:
        raise UserError(f"{path}: the record names trial {record.key!r} of phase {record.phase!r}, not this "
                        f"directory's {expected!r}; restore it from a copy of the study, nothing was changed",
                        key="STUDY_DIR")
    record.results = read_results(directory / RESULTS_FILE)
    return record


def read_trials(study: StudyDir, phase: str | None = None) -> list[TrialRecord]:
    """Every recorded trial (of one phase), search before retrain, then by key."""
    records = []
    for name in (phase,) if phase else PHASES:
        base = study.trials / name
        if base.is_dir():
            records += [read_trial(d) for d in sorted(base.iterdir()) if _holds_record(d)]
    return records


def _holds_record(directory: Path) -> bool:
    """Whether `directory` is a trial's: its record, or (damage) its results or checkpoints without one. A
    directory holding nothing but a record's temporary file (a crash before the first rename) is no trial."""
    if (directory / TRIAL_FILE).is_file():
        return True
    if (directory / RESULTS_FILE).exists() or (directory / "checkpoints").exists():
        raise UserError(f"{directory}: a trial's results without its {TRIAL_FILE}; restore it from a copy of the "
                        "study, nothing was changed", key="STUDY_DIR")
    return False
