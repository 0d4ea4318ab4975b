"""The study harness: every arm searched in one Ray Tune experiment with per-arm Optuna studies and
successive halving, select-then-retrain, resume, one driver per study."""

from fakd.study.runner import resume, retrain, sweep

__all__ = ["resume", "retrain", "sweep"]
