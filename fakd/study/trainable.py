"""The Ray Tune trainable: a thin adapter from a trial's config to `fakd.train.train_student`."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from fakd.spec import load_spec
from fakd.train import TeacherArtifact, train_student


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares (the searched values arrive in the trial's config)."""

    spec_path: str
    arm: str
    phase: str
    teacher: TeacherArtifact | None


def trial_config(context: TrialContext, config: dict[str, Any]):  # noqa: ANN201 - RunConfig
    """The run config of one trial: the spec's defaults overlaid with the trial's searched values."""
    spec = load_spec(context.spec_path)
    flat = {**config.get("values", {}), **{k: v for k, v in config.items() if k != "values"}}
    values = {key: value for key, value in flat.items() if key in spec.space}
    if "seed" in flat:
        values["train.seed"] = int(flat["seed"])
    return spec.run_config(context.arm, values, phase=context.phase)


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Train one trial, continuing from Tune's checkpoint when the trial was restored or retried."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per report
    cfg = trial_config(context, config)
    checkpoint = tune.get_checkpoint()
    # Scratch space outside the trial directory, which Ray uploads while the trainer writes into it.
    with tempfile.TemporaryDirectory(prefix="fakd-trial-") as scratch, (
        checkpoint.as_directory() if checkpoint else contextlib.nullcontext()
    ) as resume_from:
        train_student(cfg, context.teacher, Path(scratch), report=_report, resume_from=resume_from, progress=False)


def make_trainable(context: TrialContext, cpu: float, gpu: float) -> Any:
    return tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": cpu, "gpu": gpu})
