"""Weights & Biases settings shared by the study (one run per trial) and the export (the ablation table): the mode,
the API key, the commit. Imports no Ray; wandb itself only when a run is opened."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from fakd.results import StudyDir
from fakd.spec import StudySpec, TrackingConfig

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode() -> str:
    """The user's WANDB_MODE, else online with a configured key and offline without one."""
    return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")


def log_table(tracking: TrackingConfig, study_name: str, directory: str, frame: Any) -> None:
    """Log a pandas table (the ablation table) as a W&B table in a run of its own."""
    import wandb

    run_id = re.sub(r"[^A-Za-z0-9_-]", "_", f"{study_name}-ablation")
    run = wandb.init(project=tracking.project, entity=tracking.entity, group=study_name, job_type="summary",
                     id=run_id, name=f"{study_name}-ablation", dir=directory, resume="allow", mode=wandb_mode(),
                     reinit="create_new", settings=wandb.Settings(console="off", silent=True))
    run.log({"ablation": wandb.Table(dataframe=frame.astype(str))})
    run.finish()


def effective_tracking(spec: StudySpec, study: StudyDir) -> TrackingConfig:
    """A study's tracking settings: its spec's, switched off when it was run with --no-wandb."""
    tracking = spec.settings.tracking
    if study.metadata().get("no_wandb"):
        return tracking.model_copy(update={"wandb": False})
    return tracking
