"""Weights & Biases streaming: one W&B run per trial, grouped by study, offline unless a key is configured."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fakd.spec import TrackingConfig
from fakd.study.handoff import trial_task
from fakd.tracking import wandb_mode


class WandbStreamer(Callback):
    """A Tune callback in the driver: one W&B run per study trial, whose id is derived from the trial's key.

    Runs live in the driver, so a trial stopped early or lost with its node still has every reported
    metric; a resumed study re-opens (never duplicates) the runs of trials that continue, and finished
    trials report nothing more.
    """

    def __init__(self, tracking: TrackingConfig, study_name: str, directory: str, job_type: str,
                 shared_config: dict[str, Any], records: Mapping[str, Any]) -> None:
        """`shared_config` holds what every trial shares (teacher id, git commit); `records` maps trial keys
        to their `TrialRecord` (arm, student, seed and searched values go into each run's config)."""
        self.tracking, self.study_name, self.directory = tracking, study_name, directory
        self.job_type, self.shared_config, self.records = job_type, shared_config, records
        self.runs: dict[str, Any] = {}
        self.enabled = tracking.wandb

    def setup(self, **info: Any) -> None:
        """Also called when a study is resumed: `resume --no-wandb` switches streaming off from then on."""
        marker = Path(self.directory) / "study.json"
        if marker.is_file() and json.loads(marker.read_text()).get("no_wandb"):
            self.enabled = False

    def _run(self, trial: Any) -> Any:
        key = trial_task(trial.config).key
        if key not in self.runs:
            import wandb

            record = self.records[key]
            config = {**self.shared_config, "trial": key, "arm": record.arm, "student": record.student,
                      "seed": record.seed, "repeat": record.repeat, **record.values}
            run_id = re.sub(r"[^A-Za-z0-9_-]", "_", f"{self.study_name}-{key}")
            self.runs[key] = wandb.init(
                project=self.tracking.project, entity=self.tracking.entity, group=self.study_name,
                job_type=self.job_type, id=run_id, name=f"{record.arm}-{key.split('/')[-1]}", config=config,
                dir=self.directory, resume="allow", mode=wandb_mode(), reinit="create_new",
                settings=wandb.Settings(console="off", silent=True),
            )
        return self.runs[key]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not self.enabled:
            return
        scalars = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        scalars.update({f"val_iou/{i}": v for i, v in enumerate(result.get("val_iou", []))})
        self._run(trial).log(scalars, step=int(result.get("iteration", iteration)))

    def _finish(self, trial: Any, exit_code: int) -> None:
        run = self.runs.pop(trial_task(trial.config).key, None)
        if run is not None:
            run.finish(exit_code=exit_code)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, 0)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, 1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for run in self.runs.values():
            run.finish()
        self.runs.clear()


def sync_hint(directory: Path) -> str | None:
    if wandb_mode() != "offline" or not directory.is_dir():
        return None
    return f"W&B ran offline; upload later with: wandb sync {directory}/wandb/offline-run-*"
