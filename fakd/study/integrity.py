"""What a driver checks before it runs trials of an existing study: the files those trials will load are sound.

A damaged teacher or trial checkpoint found inside a trial would fail that trial (after its retries) and so burn
the arm's budget for good; found here, it is one line naming the file, and nothing in the study has changed.
"""

from __future__ import annotations

from typing import Any

from fakd.errors import UserError
from fakd.results import TERMINAL, StudyDir, TrialRecord
from fakd.spec import StudySpec
from fakd.study.handoff import StudyTeacher

CHECKPOINT_KEYS = ("iteration", "model", "objective", "optimizer", "scheduler", "rng")
RESTORE = "restore it from a copy of the study (or delete that trial's checkpoints/ to restart it); nothing was changed"


def check_resumable(study: StudyDir, spec: StudySpec, meta: dict[str, Any], records: list[TrialRecord]) -> None:
    """The study's teacher (named by its metadata `meta`) fits its spec, and every unfinished trial's latest
    checkpoint is a loadable checkpoint of as many processes as the spec's `resources.workers`; a `UserError` naming
    the file otherwise."""
    from fakd.train.checkpoint import latest_checkpoint, load_checkpoint
    from fakd.train.teacher import check_teacher_checkpoint

    teacher = StudyTeacher.from_json(meta.get("teacher"))
    if teacher is not None and study.path(teacher.path).is_file():
        path = study.path(teacher.path)
        cfg = spec.run_config(spec.settings.arms[0])
        num_classes = meta.get("data", {}).get("num_classes", cfg.data.num_classes)
        try:
            check_teacher_checkpoint(path, cfg, num_classes)
        except UserError as exc:
            raise UserError(f"the study's teacher: {exc.message}; restore it from a copy of the study, nothing was "
                            "changed", key="STUDY_DIR") from None
    workers = spec.settings.resources.workers
    for record in records:
        if record.state in TERMINAL:
            continue
        latest = latest_checkpoint(study.trial_dir(record.key) / "checkpoints")
        if latest is None:
            continue
        try:
            state = load_checkpoint(latest)
        except UserError as exc:
            raise UserError(f"trial {record.key}: {exc.message}; {RESTORE}", key="STUDY_DIR") from None
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise UserError(f"trial {record.key}: {latest} is not a full training checkpoint (no "
                            f"{', '.join(missing)}); {RESTORE}", key="STUDY_DIR")
        saved = int(state.get("world_size", 1))
        if saved != workers:
            raise UserError(f"trial {record.key}: its checkpoint {latest} was written by {saved} worker(s) but the "
                            f"study's spec asks for {workers}; a trial continues exactly only with as many workers as "
                            "it started with", key="resources.workers")
