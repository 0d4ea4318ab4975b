"""What the driver hands its trials, typed: validated once in the driver, pickled to each trial's processes as is.

A Tune trial's config is `{TASK: TrialTask}`; every trial of a driver run shares one `TrialContext`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakd.config import RunConfig

TASK = "task"
"""The key of a trial's `TrialTask` in its Tune config."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a driver run shares."""

    study_root: str  # the study's location now, as the driver and every worker see it
    teacher: str | None  # the teacher checkpoint, relative to the study root


@dataclass(frozen=True)
class TrialTask:
    """One trial: its key in the study (`search/kd-000`), its arm and its resolved run."""

    key: str
    arm: str
    run: RunConfig

    @property
    def name(self) -> str:
        """The key without its phase (`kd-000`): Tune's name of the trial."""
        return self.key.split("/")[-1]

    def work_dir(self, study_root: str | Path) -> Path:
        """The trial's directory in the study: its record, results and checkpoints."""
        return Path(study_root) / "trials" / self.key

    def as_config(self) -> dict[str, Any]:
        return {TASK: self}


def trial_task(config: Mapping[str, Any]) -> TrialTask:
    """The task in a trial's Tune config."""
    return config[TASK]
