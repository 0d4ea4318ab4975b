"""Training: the loop, checkpoints, the teacher cache and whole runs. Imports no Ray, Optuna or W&B."""

from fakd.train.distributed import DistContext
from fakd.train.loop import NonFiniteLossError, Reporter, evaluate, fit
from fakd.train.run import check_models, run_distillation, train_student
from fakd.train.teacher import (
    TeacherArtifact,
    check_teacher_checkpoint,
    ensure_teacher,
    evaluate_teacher,
    load_teacher,
    load_zoo_network,
    read_teacher_file,
    teacher_key,
    zoo_teacher_key,
)

__all__ = [
    "DistContext",
    "NonFiniteLossError",
    "Reporter",
    "TeacherArtifact",
    "check_models",
    "check_teacher_checkpoint",
    "ensure_teacher",
    "evaluate",
    "evaluate_teacher",
    "fit",
    "load_teacher",
    "load_zoo_network",
    "read_teacher_file",
    "run_distillation",
    "teacher_key",
    "train_student",
    "zoo_teacher_key",
]
