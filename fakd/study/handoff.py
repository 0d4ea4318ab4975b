"""What the driver hands its trials, typed: validated once in the driver, pickled to each trial's processes as is.

A Tune trial's config is `{TASK: TrialTask}`; every trial of a driver run shares one `TrialContext`, which holds the
study's teacher as the `StudyTeacher` that provisioning made (and study.json records).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fakd.config import RunConfig

if TYPE_CHECKING:
    from fakd.train import TeacherArtifact

TASK = "task"
"""The key of a trial's `TrialTask` in its Tune config."""


@dataclass(frozen=True)
class StudyTeacher:
    """The study's teacher: trained once in the study, or copied from a given (or model-zoo) checkpoint."""

    key: str  # the teacher cache's key of its configuration (a given checkpoint's own, or "given")
    path: str  # its checkpoint, relative to the study root (a study may be moved)
    metrics: dict[str, Any] = field(default_factory=dict)  # its validation metrics
    source: str | None = None  # the checkpoint it was copied from
    zoo: str | None = None  # the model zoo of that checkpoint (mmseg, torchvision)

    def to_json(self) -> dict[str, Any]:
        """What study.json records (`teacher`)."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: Any) -> StudyTeacher | None:
        """The teacher study.json records, or None where it records none (or one a person damaged)."""
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            return None
        metrics = data.get("metrics")
        return cls(str(data.get("key", "given")), data["path"], metrics if isinstance(metrics, dict) else {},
                   data.get("source") if isinstance(data.get("source"), str) else None,
                   data.get("zoo") if isinstance(data.get("zoo"), str) else None)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a driver run shares."""

    study_root: str  # the study's location now, as the driver and every worker see it
    teacher: StudyTeacher | None  # None: the trials do not distill (benchmarks, tests)

    def teacher_artifact(self) -> TeacherArtifact | None:
        """The teacher as a trial loads it: its checkpoint where this process sees the study, its key and metrics."""
        from fakd.train import TeacherArtifact  # torch and timm: not loaded by the driver's readers of a study

        if self.teacher is None:
            return None
        return TeacherArtifact(Path(self.study_root) / self.teacher.path, self.teacher.key, self.teacher.metrics)


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
