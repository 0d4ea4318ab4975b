"""One teacher→student run, as plain functions (the study layer calls `train_student` per trial)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakd.atomic import write_atomic
from fakd.config import STORED, RunConfig
from fakd.errors import UserError
from fakd.train.checkpoint import checkpoint_iteration, latest_checkpoint
from fakd.train.data import build_splits
from fakd.train.distributed import DistContext
from fakd.train.loop import Reporter, fit
from fakd.train.teacher import TeacherArtifact, build_model, ensure_teacher, load_teacher, model_config


def train_student(
    cfg: RunConfig,
    teacher: TeacherArtifact | None,
    work_dir: Path,
    *,
    report: Reporter | None = None,
    resume_from: str | Path | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    replay: bool = False,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Train the student of `cfg` (distilled from `teacher` when its arm distills); the last metrics.

    `resume_from`, `replay` and `dist` (data-parallel training: every process calls this alike) are as in `fit`;
    every process runs the teacher's forward pass on its own slice of the batch."""
    splits = build_splits(cfg)
    frozen = None
    if cfg.distills:
        if teacher is None:
            raise ValueError(f"arm {cfg.arm!r} distills: a teacher is needed")
        frozen = load_teacher(teacher, cfg, splits.num_classes)
    model = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    return fit(cfg, model, splits, work_dir, teacher=frozen, report=report, resume_from=resume_from,
               progress=progress, log=log, replay=replay, dist=dist)


def run_distillation(
    cfg: RunConfig,
    out_dir: Path,
    *,
    report: Reporter | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Teacher (cached under `out_dir/teachers`) then student (resumed from `out_dir/student` if there).

    Returns the teacher's and the student's last metrics, and `reused`: whether the student had finished
    before (nothing was trained)."""
    work = out_dir / "student"
    _claim(work, cfg)
    teacher = ensure_teacher(cfg, out_dir / "teachers", progress=progress, log=log)
    latest = latest_checkpoint(work / "checkpoints")
    reused = latest is not None and checkpoint_iteration(latest) >= cfg.train.iters
    student = train_student(cfg, teacher, work, report=report, resume_from=latest, progress=progress, log=log)
    return {"teacher": teacher.metrics, "student": student, "reused": reused}


def _claim(work: Path, cfg: RunConfig) -> None:
    """Record the run's config in `work`; a directory that holds another run's checkpoints is refused."""
    record = work / "run.json"
    if record.is_file() and _recorded(record) != cfg:
        raise UserError(f"{work.parent} holds a run with another configuration; choose another --out",
                        key="--out")
    work.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps(cfg.model_dump(mode="json"), indent=2))


def _recorded(record: Path) -> RunConfig | None:
    """The run `record` holds, read as this version reads a run (a key added since takes its default, so a run
    recorded by an earlier version is still the same run); None where it holds none."""
    try:
        return RunConfig.model_validate(json.loads(record.read_text()), context=STORED)
    except ValueError:  # not JSON, or not a run (pydantic's ValidationError is a ValueError)
        return None


def check_models(cfg: RunConfig, file: str, num_classes: int) -> None:
    """Build teacher and student once so unknown heads, strides or weight files fail before any training (a zoo
    teacher is built from its file: `check_teacher_checkpoint`)."""
    teacher = [] if cfg.teacher.is_zoo else [("teacher", model_config(cfg.teacher))]
    for role, model in [*teacher, ("student", cfg.student)]:
        try:
            build_model(model, num_classes, seed=0)
        except UserError as exc:
            raise exc.located(file, role) from None
