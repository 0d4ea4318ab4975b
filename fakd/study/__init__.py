"""The study harness: every arm searched in one Ray Tune experiment with per-arm Optuna studies and
successive halving, select-then-retrain, resume, one driver per study.

The commands load lazily (`fakd.study.sweep` imports Ray and the trainer on first use), so the package's light
modules (`requests`, `selection`, ...) serve the command line without them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fakd.study.runner import extend, resume, retrain, sweep

__all__ = ["extend", "resume", "retrain", "sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fakd.study import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'fakd.study' has no attribute {name!r}")
