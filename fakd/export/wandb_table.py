"""The ablation table of a study as a W&B table, in a W&B run of its own (after every retrain, by the CLI)."""

from __future__ import annotations

from pathlib import Path

from fakd.errors import UserError
from fakd.export.table import build_table
from fakd.results import open_study_dir, read_trials
from fakd.tracking import effective_tracking, log_table


def log_ablation_table(study_path: str | Path) -> bool:
    """Log the study's ablation table to W&B when its tracking is on and it has retrain runs; whether it did."""
    study = open_study_dir(study_path)
    spec = study.read_spec()
    tracking = effective_tracking(spec, study)
    records = read_trials(study)
    if not tracking.wandb or not any(r.phase == "retrain" for r in records):
        return False
    try:
        frame = build_table(study, spec, records).frame
    except UserError:
        return False
    log_table(tracking, spec.name, str(study.root), frame)
    return True
