"""A study's search space per arm, as Optuna distributions (what the search asked and what exports rank)."""

from __future__ import annotations

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fakd.spec import Distribution, StudySpec
from fakd.vocab import ARM_TABLE


def to_optuna(dist: Distribution) -> BaseDistribution:
    if dist.kind == "choice":
        return CategoricalDistribution(list(dist.bounds))
    low, high = dist.bounds
    if dist.kind == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(float(low), float(high), log=dist.kind == "loguniform")


def arm_space(spec: StudySpec, arm: str) -> dict[str, BaseDistribution]:
    """The searched keys that change something in `arm` (the baseline has no KD temperature to tune)."""
    return {key: to_optuna(dist) for key, dist in spec.space.items() if ARM_TABLE[arm].uses(key)}
