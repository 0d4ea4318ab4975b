"""The study harness: Optuna search per arm on Ray Tune, ASHA, resume, status."""

from fakd.study.runner import resume, retrain, sweep
from fakd.study.status import TrialRecord, status

__all__ = ["TrialRecord", "resume",
    "retrain", "status", "sweep"]
