"""Successive halving inside each arm: trials of different arms never compete in a rung.

A trial's evaluations are counted 1, 2, … (one every `train.eval_every` iterations, the last at
`train.iters`). Rungs sit at `grace_period · reduction_factor^k` evaluations, below the last one.

- `AsyncHalving` (ASHA): a trial reaching a rung continues if its score is in the top 1/η of the scores
  recorded at that rung so far (within its arm), else it stops. Decisions depend on arrival order.
- `SyncHalving`: the rung of a bracket (one generation of one arm) is decided when every trial of it has
  reported there (or ended): the best ⌊n/η⌋ (at least one; ties to the lower index) continue. A trial
  that reaches an undecided rung waits (stopped, resumed from its checkpoint once promoted). Decisions
  depend on the scores alone, so a study re-run decides the same, whatever the timing.

Both are pure bookkeeping (no Ray): the study feeds them scores and acts on the decisions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

CONTINUE, PRUNE, WAIT = "continue", "prune", "wait"


def rung_milestones(evaluations: int, grace_period: int, reduction_factor: int) -> list[int]:
    """Evaluation counts at which a trial of `evaluations` evaluations may be stopped."""
    milestones, milestone = [], grace_period
    while milestone < evaluations:
        milestones.append(milestone)
        milestone *= reduction_factor
    return milestones


def _score(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


@dataclass
class AsyncHalving:
    """ASHA, one set of rungs per arm."""

    milestones: list[int]
    reduction_factor: int
    rungs: dict[tuple[Hashable, int], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))

    def decide(self, arm: Hashable, trial: str, evaluation: int, score: float | None) -> str:
        if evaluation not in self.milestones:
            return CONTINUE
        recorded = self.rungs[(arm, evaluation)]
        if trial in recorded:  # a resumed trial reports its checkpoint again: it had been let through
            return CONTINUE
        cutoff = self._cutoff(list(recorded.values()))
        recorded[trial] = _score(score)
        return PRUNE if recorded[trial] < cutoff else CONTINUE

    def _cutoff(self, values: list[float]) -> float:
        if not values:
            return -math.inf
        finite = np.array([v if math.isfinite(v) else np.nan for v in values])
        if np.isnan(finite).all():
            return -math.inf
        return float(np.nanpercentile(finite, (1 - 1 / self.reduction_factor) * 100))

    def forget(self, arm: Hashable, trial: str) -> None:  # noqa: D102 - nothing to forget in ASHA
        return None


@dataclass
class _Bracket:
    members: list[str]  # in index order: ties go to the earlier trial
    scores: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    promoted: dict[int, set[str]] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # failed before finishing: no longer expected at any rung


@dataclass
class SyncHalving:
    """Synchronous successive halving per bracket (the trials of one generation of one arm)."""

    milestones: list[int]
    reduction_factor: int
    brackets: dict[Hashable, _Bracket] = field(default_factory=dict)
    bracket_of: dict[str, Hashable] = field(default_factory=dict)

    def add_bracket(self, bracket: Hashable, members: list[str]) -> None:
        self.brackets[bracket] = _Bracket(list(members))
        self.bracket_of.update({member: bracket for member in members})

    def decide(self, arm: Hashable, trial: str, evaluation: int, score: float | None) -> str:
        if evaluation not in self.milestones:
            return CONTINUE
        bracket = self.brackets[self.bracket_of[trial]]
        bracket.scores[evaluation][trial] = _score(score)
        self._settle(bracket)
        promoted = bracket.promoted.get(evaluation)
        if promoted is None:
            return WAIT
        return CONTINUE if trial in promoted else PRUNE

    def forget(self, arm: Hashable, trial: str) -> None:
        """`trial` ended early (it failed): rungs no longer wait for it."""
        bracket = self.brackets.get(self.bracket_of.get(trial))
        if bracket is not None:
            bracket.ended.add(trial)
            self._settle(bracket)

    def waiting_promoted(self, trial: str) -> bool | None:
        """For a trial waiting at a rung: True once promoted, False once pruned, None while undecided."""
        bracket = self.brackets[self.bracket_of[trial]]
        for milestone in reversed(self.milestones):
            if trial in bracket.scores.get(milestone, {}):
                promoted = bracket.promoted.get(milestone)
                return None if promoted is None else trial in promoted
        return None

    def _expected(self, bracket: _Bracket, milestone: int) -> list[str]:
        index = self.milestones.index(milestone)
        alive = bracket.members if index == 0 else sorted(
            bracket.promoted.get(self.milestones[index - 1], set()), key=bracket.members.index)
        return [m for m in alive if m not in bracket.ended]

    def _settle(self, bracket: _Bracket) -> None:
        """Decide every rung whose expected trials have all reported, lowest rung first."""
        for index, milestone in enumerate(self.milestones):
            if milestone in bracket.promoted:
                continue
            if index > 0 and self.milestones[index - 1] not in bracket.promoted:
                return
            expected = self._expected(bracket, milestone)
            scores = bracket.scores[milestone]
            if any(m not in scores for m in expected):
                return
            ranked = sorted(expected, key=lambda m: (-scores[m], bracket.members.index(m)))
            keep = max(1, len(ranked) // self.reduction_factor) if ranked else 0
            bracket.promoted[milestone] = set(ranked[:keep])
