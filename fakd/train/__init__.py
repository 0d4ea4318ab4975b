"""Training: the loop, checkpoints, the teacher cache and whole runs. Imports no Ray, Optuna or W&B."""

from fakd.train.loop import NonFiniteLossError, Reporter, evaluate, fit
from fakd.train.run import check_models, run_distillation, train_student
from fakd.train.teacher import (
    TeacherArtifact,
    check_teacher_checkpoint,
    ensure_teacher,
    load_teacher,
    read_teacher_file,
    teacher_key,
)

__all__ = [
    "NonFiniteLossError",
    "Reporter",
    "TeacherArtifact",
    "check_models",
    "check_teacher_checkpoint",
    "ensure_teacher",
    "evaluate",
    "fit",
    "load_teacher",
    "read_teacher_file",
    "run_distillation",
    "teacher_key",
    "train_student",
]
