"""Sweeps: one Optuna-guided Ray Tune experiment per arm, all inside one study directory; and resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from fakd.errors import UserError
from fakd.export.pareto import front_json, pareto_front
from fakd.spec import StudySpec, TrackingConfig, load_spec
from fakd.study.cluster import check_cluster_resources, check_local_resources, ray_runtime
from fakd.study.layout import StudyDir, check_new_study_dir, create_study_dir, open_study_dir
from fakd.study.retrain import check_seed_count, retrain_candidates, retrain_seeds, retrain_tuner
from fakd.study.space import arm_space
from fakd.study.status import study_trials
from fakd.study.tracking import WandbStreamer, git_commit, log_table, sync_hint
from fakd.study.trainable import TrialContext, make_trainable
from fakd.train import TeacherArtifact, check_models, ensure_teacher

Log = Callable[[str], None]
OBJECTIVE_METRICS = {"miou": ("val_miou", "max"), "params": ("params", "min")}


def _print(message: str) -> None:
    print(message, flush=True)


def sweep(
    spec_path: str,
    overrides: Sequence[str] = (),
    *,
    storage: str | Path = "runs",
    name: str | None = None,
    address: str | None = None,
    teacher_checkpoint: str | None = None,
    no_wandb: bool = False,
    log: Log = _print,
) -> StudyDir:
    """Validate, create the study directory, train the teacher once, then search every arm."""
    overrides = list(overrides)
    if teacher_checkpoint:
        overrides.append(f"teacher.checkpoint={teacher_checkpoint}")
    spec = load_spec(spec_path, overrides)
    check_models(spec.defaults, spec.path)
    root = Path(storage).expanduser().resolve() / (name or spec.name)
    check_new_study_dir(root)
    if address is None:
        check_local_resources(spec.settings.resources.cpu, spec.settings.resources.gpu, spec.path)
    with ray_runtime(address):
        check_cluster_resources(spec.settings.resources.cpu, spec.settings.resources.gpu, spec.path)
        study = create_study_dir(root, spec.raw, {"name": spec.name, "source": str(Path(spec_path).resolve()),
                                                  "overrides": overrides, "no_wandb": no_wandb})
        log(f"study directory: {study.root}")
        _run(study, log)
    return study


def resume(
    study_path: str | Path, *, address: str | None = None, no_wandb: bool = False, log: Log = _print
) -> StudyDir:
    """Finish an interrupted study: finished trials stay finished, running ones continue from checkpoints."""
    study, spec = _open(study_path, no_wandb)
    with ray_runtime(address):
        check_cluster_resources(spec.settings.resources.cpu, spec.settings.resources.gpu, spec.path)
        log(f"resuming study {study.root}")
        _run(study, log)
    return study


def _open(study_path: str | Path, no_wandb: bool) -> tuple[StudyDir, StudySpec]:
    """An existing study and its spec; `no_wandb` switches W&B off for the rest of the study."""
    study = open_study_dir(study_path)
    if no_wandb:
        study.update_metadata(no_wandb=True)
    return study, load_spec(study.spec)


def _run(study: StudyDir, log: Log) -> None:
    spec = load_spec(study.spec)
    teacher = _teacher(spec, study, log)
    study.update_metadata(teacher={"key": teacher.key, "path": str(teacher.path), "metrics": teacher.metrics})
    for arm in spec.settings.arms:
        run_arm(spec, study, arm, teacher, log)
    study.update_metadata(search_finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if "params" in spec.settings.search.objectives:
        front = pareto_front([r for r in study_trials(study) if r.phase == "search"])
        (study.root / "pareto.json").write_text(json.dumps(front_json(front), indent=2, default=str))
        log(f"Pareto front of mIoU vs parameters ({len(front)} trials): {study.root / 'pareto.json'}")
    log(f"search finished: {study.root}")
    hint = sync_hint(study.root) if _tracking(spec, study).wandb else None
    if hint:
        log(hint)
    seeds = study.metadata().get("retrain_seeds") or spec.settings.search.retrain_seeds
    if seeds:
        _retrain_all(spec, study, teacher, seeds, log)


def _retrain_all(spec: StudySpec, study: StudyDir, teacher: TeacherArtifact, seeds: int, log: Log) -> None:
    study.update_metadata(retrain_seeds=seeds)
    for arm in spec.settings.arms:
        retrain_arm(spec, study, arm, teacher, seeds, log)
    study.update_metadata(retrain_finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    log(f"retrain finished: {study.root}")
    from fakd.export import export_study

    table = export_study(study.root, "md").table.frame
    log_table(_tracking(spec, study), spec.name, str(study.root), table)


def retrain(
    study_path: str | Path, seeds: int, *, address: str | None = None, no_wandb: bool = False, log: Log = _print
) -> StudyDir:
    """Select-then-retrain on a searched study (finishing its search first if it was interrupted)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}", key="--seeds")
    study, spec = _open(study_path, no_wandb)
    for arm in spec.settings.arms:
        check_seed_count(study, arm, seeds)
    with ray_runtime(address):
        study.update_metadata(retrain_seeds=seeds)
        _run(study, log)
    return study


def _tracking(spec: StudySpec, study: StudyDir) -> TrackingConfig:
    """The spec's tracking settings, switched off when the study was run with --no-wandb."""
    if study.metadata().get("no_wandb"):
        return spec.settings.tracking.model_copy(update={"wandb": False})
    return spec.settings.tracking


def callbacks(spec: StudySpec, study: StudyDir, job_type: str, teacher_key: str) -> list[tune.Callback]:
    """The driver-side callbacks of an experiment: W&B streaming when the spec asks for it."""
    tracking = _tracking(spec, study)
    if not tracking.wandb:
        return []
    shared = {"student": spec.defaults.student.backbone, "seed": spec.defaults.train.seed, "teacher_id": teacher_key,
              "git_commit": git_commit(), "study": spec.name}
    return [WandbStreamer(tracking, spec.name, str(study.root), job_type, shared)]


def _teacher(spec: StudySpec, study: StudyDir, log: Log) -> TeacherArtifact:
    """The study's teacher, trained once as a Ray task with a trial's resources and cached in the study."""
    resources = spec.settings.resources
    task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu)(ensure_teacher)
    cfg = spec.run_config(spec.settings.arms[0])
    started = time.perf_counter()
    teacher = ray.get(task.remote(cfg, study.teachers, progress=False, log=_print))
    log(f"teacher {cfg.teacher.backbone} ready ({teacher.key}, val mIoU "
        f"{teacher.metrics.get('val_miou', float('nan')):.4f}, {time.perf_counter() - started:.0f} s)")
    return teacher


def _optuna_storage(spec: StudySpec, study: StudyDir) -> optuna.storages.BaseStorage:
    url = spec.settings.search.storage or study.optuna_url()
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL
        raise UserError(f"cannot open Optuna storage {url}: {exc}", file=spec.path, key="search.storage") from None


def _objectives(spec: StudySpec) -> tuple[str | list[str], str | list[str]]:
    search = spec.settings.search
    if search.objectives == ["miou"]:
        return search.metric, "max"
    metrics = [search.metric] + [OBJECTIVE_METRICS[o][0] for o in search.objectives[1:]]
    return metrics, ["max"] + [OBJECTIVE_METRICS[o][1] for o in search.objectives[1:]]


def _tuner(spec: StudySpec, study: StudyDir, arm: str, trainable: Any, teacher_key: str) -> tune.Tuner:
    search = spec.settings.search
    metric, mode = _objectives(spec)
    space = arm_space(spec, arm)
    searcher = None
    if space:
        searcher = OptunaSearch(
            space=space, metric=metric, mode=mode, seed=search.seed,
            study_name=f"{spec.name}/{arm}", storage=_optuna_storage(spec, study),
        )
    train = spec.defaults.train
    scheduler = None
    if search.scheduler == "asha":
        evaluations = math.ceil(train.iters / train.eval_every)
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric=search.metric, mode="max", max_t=evaluations,
            grace_period=min(search.grace_period, evaluations), reduction_factor=search.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent,
            metric=None if searcher or scheduler else search.metric, mode=None if searcher or scheduler else "max",
        ),
        run_config=tune.RunConfig(
            name=study.experiment(arm).name, storage_path=str(study.tune),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks(spec, study, "search", teacher_key),
            verbose=0,
        ),
        param_space={"arm": arm},
    )


def run_arm(spec: StudySpec, study: StudyDir, arm: str, teacher: TeacherArtifact, log: Log) -> None:
    """Search one arm, or finish its interrupted search; a finished arm is left alone."""
    if study.done_flag(arm).exists():
        log(f"[{arm}] already searched")
        return
    log(f"[{arm}] searching {spec.settings.search.num_samples} trials")
    new_tuner = lambda trainable: _tuner(spec, study, arm, trainable, teacher.key)  # noqa: E731
    _run_experiment(spec, study, arm, "search", teacher, new_tuner, log)


def retrain_arm(spec: StudySpec, study: StudyDir, arm: str, teacher: TeacherArtifact, seeds: int, log: Log) -> None:
    """Retrain the arm's best configuration(s) with `seeds` fresh seeds; resumable like a search."""
    if check_seed_count(study, arm, seeds):
        log(f"[{arm}] already retrained")
        return
    search = spec.settings.search
    candidates = retrain_candidates(spec, study, arm, retrain_seeds(spec, seeds))
    log(f"[{arm}] retraining {len(candidates)} runs (best configuration × {seeds} seeds)")
    _run_experiment(spec, study, arm, "final", teacher, lambda trainable: retrain_tuner(
        study, arm, trainable, candidates, search.max_concurrent, search.max_failures,
        callbacks(spec, study, "retrain", teacher.key)), log, extra={"seeds": seeds})


def _run_experiment(
    spec: StudySpec, study: StudyDir, arm: str, phase: str, teacher: TeacherArtifact,
    new_tuner: Callable[[Any], tune.Tuner], log: Log, extra: dict[str, Any] | None = None,
) -> None:
    label = "search" if phase == "search" else "retrain"
    resources = spec.settings.resources
    trainable = make_trainable(TrialContext(str(study.spec), arm, phase, teacher), resources.cpu, resources.gpu)
    experiment = study.experiment(arm, label)
    if tune.Tuner.can_restore(str(experiment)):
        log(f"[{arm}] continuing the interrupted {label}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = new_tuner(trainable)
    started = time.perf_counter()
    results = tuner.fit()
    errors = [r for r in results if r.error is not None]
    for result in errors:
        log(f"[{arm}] trial {Path(result.path).name} errored:\n{_traceback(result)}")
    log(f"[{arm}] {label}: {len(results)} trials ({len(errors)} errored) in {time.perf_counter() - started:.0f} s")
    flag = study.done_flag(arm, label)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text(json.dumps({"trials": len(results), "errors": len(errors), **(extra or {})}))


def _traceback(result: Any) -> str:
    error_file = Path(result.path) / "error.txt"
    if error_file.is_file():
        return error_file.read_text().strip()
    return repr(result.error)
