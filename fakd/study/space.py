"""From a spec's search distributions to the Optuna search space of one arm."""

from __future__ import annotations

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from fakd.spec import Distribution, StudySpec


def relevant_to_arm(key: str, arm: str) -> bool:
    """Whether a searched key changes anything in `arm` (the baseline has no KD temperature to tune)."""
    if key.startswith("loss.kd."):
        return arm.startswith("kd")
    if key.startswith("loss.cwd."):
        return arm.startswith("cwd")
    if key.startswith("loss.fakd."):
        return arm.endswith("+fakd")
    return True


def to_optuna(dist: Distribution) -> BaseDistribution:
    if dist.kind == "choice":
        return CategoricalDistribution(list(dist.bounds))
    low, high = dist.bounds
    if dist.kind == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(float(low), float(high), log=dist.kind == "loguniform")


def arm_space(spec: StudySpec, arm: str) -> dict[str, BaseDistribution]:
    return {key: to_optuna(dist) for key, dist in spec.space.items() if relevant_to_arm(key, arm)}
