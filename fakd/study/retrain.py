"""Select-then-retrain: the best searched configuration of each (arm, student), retrained with fresh seeds
on the full training split and evaluated on the validation split."""

from __future__ import annotations

import json
from typing import Any

from ray import tune

from fakd.errors import UserError
from fakd.spec import StudySpec
from fakd.study.layout import StudyDir
from fakd.study.status import TrialRecord, read_experiment

STUDENT_KEY = "student.backbone"


def retrain_seeds(spec: StudySpec, count: int) -> list[int]:
    """Seeds never used by the search (which trains with `train.seed`)."""
    return [spec.defaults.train.seed + 1 + i for i in range(count)]


def select_best(records: list[TrialRecord]) -> dict[str, TrialRecord]:
    """Per student backbone (or "default" when students were not searched): the trial whose final model
    scored best on the held-out split."""
    best: dict[str, TrialRecord] = {}
    for record in records:
        if record.status != "TERMINATED" or record.final_metric is None:
            continue
        student = str(record.config.get(STUDENT_KEY, "default"))
        if student not in best or record.final_metric > best[student].final_metric:
            best[student] = record
    return best


def retrain_candidates(spec: StudySpec, study: StudyDir, arm: str, seeds: list[int]) -> list[dict[str, Any]]:
    records = read_experiment(study.experiment(arm, "search"), arm, "search", spec.settings.search.metric)
    best = select_best(records)
    if not best:
        raise UserError(f"arm {arm!r} has no finished search trial to retrain", key="STUDY_DIR")
    return [{**record.config, "seed": seed} for record in best.values() for seed in seeds]


def retrain_tuner(study: StudyDir, arm: str, trainable: Any, candidates: list[dict[str, Any]],
                  max_concurrent: int, max_failures: int, callbacks: list[tune.Callback]) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(
            name=study.experiment(arm, "retrain").name, storage_path=str(study.tune),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=callbacks, verbose=0,
        ),
        param_space={"arm": arm, "values": tune.grid_search(candidates)},
    )


def check_seed_count(study: StudyDir, arm: str, count: int) -> bool:
    """True when this arm was already retrained with `count` seeds; an error for another count."""
    flag = study.done_flag(arm, "retrain")
    if not flag.exists():
        return False
    done = json.loads(flag.read_text()).get("seeds")
    if done != count:
        raise UserError(f"arm {arm!r} was retrained with {done} seeds; a study keeps one retrain "
                        f"(export it, or start a new study)", key="--seeds")
    return True
