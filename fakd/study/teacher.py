"""The study's teacher, provisioned once per study: trained in the study's teacher cache, copied from a given
checkpoint, or copied from a model zoo and evaluated, each as a Ray task with a trial's resources."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from fakd.atomic import copy_atomic
from fakd.results import StudyDir
from fakd.spec import StudySpec
from fakd.study.cluster import largest_node_cpus
from fakd.study.handoff import StudyTeacher
from fakd.study.lock import training_in
from fakd.vocab import METRIC

Log = Callable[[str], None]
GIVEN_TEACHER = "teachers/given/teacher.pt"


def _print(message: str) -> None:
    print(message, flush=True)


def study_teacher(study: StudyDir, spec: StudySpec, log: Log) -> StudyTeacher:
    """The study's teacher, recorded relative to the study: trained once (a Ray task with a trial's
    resources) or copied from the given checkpoint; a model-zoo teacher is copied and then evaluated once on
    the validation split (a Ray task with a trial's resources), so the table's teacher row has its metrics."""
    known = StudyTeacher.from_json(study.metadata().get("teacher"))
    if known is not None and study.path(known.path).is_file():
        return known
    given = spec.defaults.teacher.checkpoint
    started = time.perf_counter()
    if given and spec.defaults.teacher.is_zoo:
        from fakd.train import evaluate_teacher, zoo_teacher_key
        from fakd.train.teacher import copy_teacher_file

        target = study.path(GIVEN_TEACHER)
        copy_teacher_file(given, target)
        cfg = spec.run_config(spec.settings.arms[0], split="val")
        log(f"evaluating teacher {cfg.teacher.label} on the validation split")
        resources = spec.settings.resources
        task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu)(evaluate_teacher)
        metrics = ray.get(task.remote(target, cfg))
        teacher = StudyTeacher(zoo_teacher_key(cfg, target), GIVEN_TEACHER, metrics, str(given), cfg.teacher.source)
    elif given:
        from fakd.train import read_teacher_file

        target = study.path(GIVEN_TEACHER)
        copy_atomic(given, target)
        payload = read_teacher_file(target)
        teacher = StudyTeacher(str(payload.get("key", "given")), GIVEN_TEACHER, payload.get("metrics", {}),
                               str(given))
    else:
        resources = spec.settings.resources
        cfg = spec.run_config(spec.settings.arms[0])
        if resources.workers > 1:  # data-parallel, as the trials: a Ray Train run (its workers take the resources)
            from fakd.study.data_parallel import Scaling, ensure_teacher_data_parallel

            scaling = Scaling(resources.workers, resources.cpu, resources.gpu)
            task = ray.remote(num_cpus=0)(ensure_teacher_data_parallel)
            artifact = ray.get(task.remote(cfg, study, scaling))
        else:
            # nothing else runs while the teacher trains: on CPU it may take a whole node's cores
            cpus = resources.cpu if resources.gpu > 0 else max(resources.cpu, largest_node_cpus())
            task = ray.remote(num_cpus=cpus, num_gpus=resources.gpu)(_teacher_in_study)
            artifact = ray.get(task.remote(cfg, study))
        teacher = StudyTeacher(artifact.key, study.relative(artifact.path), artifact.metrics)
    study.update_metadata(teacher=teacher.to_json())
    miou = teacher.metrics.get(METRIC, float("nan"))
    log(f"teacher {spec.defaults.teacher.label} ready ({teacher.key}, val mIoU {miou:.4f}, "
        f"{time.perf_counter() - started:.0f} s)")
    return teacher


def _teacher_in_study(cfg: Any, study: StudyDir) -> Any:
    """`ensure_teacher` into the study's teacher cache, as one of the study's training processes."""
    from fakd.train import ensure_teacher

    with training_in(study.root):
        return ensure_teacher(cfg, study.teachers, progress=False, log=_print)
