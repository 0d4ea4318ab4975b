"""A study's search space per arm, as Optuna distributions (what the search asked and what exports rank)."""

from __future__ import annotations

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fakd.spec import Distribution, StudySpec
from fakd.vocab import arm_named


def to_optuna(dist: Distribution) -> BaseDistribution:
    if dist.kind == "choice":
        return CategoricalDistribution(list(dist.bounds))
    low, high = dist.bounds
    if dist.kind == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(float(low), float(high), log=dist.kind == "loguniform")


def inherits(spec: StudySpec, arm: str) -> bool:
    """Whether `arm` searches only the keys of the term it adds, on its base arm's selection (`search.add_on:
    inherit`)."""
    return spec.settings.search.add_on == "inherit" and arm_named(arm).add_on


def arm_space(spec: StudySpec, arm: str) -> dict[str, BaseDistribution]:
    """The searched keys that change something in `arm` (the baseline has no KD temperature to tune); for an add-on
    arm that inherits, only the keys of its own term."""
    uses = arm_named(arm).adds if inherits(spec, arm) else arm_named(arm).uses
    return {key: to_optuna(dist) for key, dist in spec.space.items() if uses(key)}


def search_stages(spec: StudySpec) -> list[list[str]]:
    """The arms searched together, stage after stage: every arm at once, or with `search.add_on: inherit` first the
    arms that select on their own, then the add-on arms on those selections."""
    later = [arm for arm in spec.settings.arms if inherits(spec, arm)]
    first = [arm for arm in spec.settings.arms if arm not in later]
    return [first, later] if later else [first]
