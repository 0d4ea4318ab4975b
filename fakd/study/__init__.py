"""The study harness: Optuna search per arm on Ray Tune, ASHA, resume, status."""

from fakd.study.runner import resume, sweep
from fakd.study.status import TrialRecord, status

__all__ = ["TrialRecord", "resume", "status", "sweep"]
