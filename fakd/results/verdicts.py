"""The sequential verdict of every comparison of a study (arm vs its base arm, per student and budget), from its
retrain records alone: what the table reports and what a sequential retrain decides its next round from.

A comparison's paired differences are arm − base over the retrain runs both arms have (same selection repeat,
same seed), in seed order. Each comparison is decided at alpha / m, m the number of comparisons the study
makes, so the family-wise error stays at most alpha however often, and after however many seeds, the verdicts
are read (`fakd.results.sequential`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fakd.results.records import TrialRecord
from fakd.results.sequential import METHOD, Verdict, verdict
from fakd.spec import DecideConfig, StudySpec
from fakd.vocab import COMPLETE, DEFAULT_BUDGET, arm_named

Comparison = tuple[str, str, str]  # (student, arm, budget); the base is the arm's base arm


@dataclass(frozen=True)
class StudyVerdicts:
    """verdicts: one per comparison. alpha_each: the level each comparison is decided at. rule: the decision
    settings used (the spec's `search.decide`, or its defaults when the spec has none)."""

    verdicts: dict[Comparison, Verdict]
    alpha_each: float
    rule: DecideConfig

    def undecided(self) -> list[Comparison]:
        return [key for key, found in self.verdicts.items() if found.decision == "undecided"]

    def method(self) -> str:
        """One line that names the method and its settings (printed under the table)."""
        rule = self.rule
        return (f"Decision: {METHOD} at family-wise α = {rule.alpha:g} ({rule.alpha:g}/{len(self.verdicts)} per "
                f"comparison), margin {100 * rule.margin:g} mIoU for 'equivalent', valid at any number of seeds "
                f"(at most {rule.max_seeds}).")


def decide_rule(spec: StudySpec) -> DecideConfig:
    """The study's decision settings: `search.decide`, else its defaults."""
    return spec.settings.search.decide or DecideConfig()


def sequential_rule(spec: StudySpec, meta: Mapping[str, Any]) -> DecideConfig | None:
    """The settings of the study's sequential retrain, None when its retrain has a fixed seed count: a
    `retrain --until-decided` (recorded in the metadata) or a `retrain --seeds` overrides the spec's
    `search.decide`."""
    mode = meta.get("retrain_mode")
    if mode == "sequential":
        return DecideConfig.model_validate(meta.get("decide") or {})
    return spec.settings.search.decide if mode is None else None


def table_rule(spec: StudySpec, meta: Mapping[str, Any], records: list[TrialRecord]) -> DecideConfig:
    """The settings the table's verdicts use: the sequential retrain's, or for a fixed seed count the spec's
    decision settings (or their defaults) over every seed it has."""
    rule = sequential_rule(spec, meta)
    if rule is not None:
        return rule
    rule = decide_rule(spec)
    seeds = len({r.seed for r in records if r.phase == "retrain"})
    return rule.model_copy(update={"max_seeds": max(rule.max_seeds, seeds)})


def compared_arms(spec: StudySpec) -> list[str]:
    """The arms of the study whose base arm is in the study too."""
    return [arm for arm in spec.settings.arms if arm_named(arm).base in spec.settings.arms]


def table_comparisons(spec: StudySpec, records: list[TrialRecord], budget: str | None = None) -> list[Comparison]:
    """Every comparison of the study's table: each student and each retrain budget (with `budget`, also one that
    has no runs yet) of every compared arm."""
    students = sorted({r.student for r in records} or {spec.defaults.student.backbone})
    budgets = {r.budget or DEFAULT_BUDGET for r in records if r.phase == "retrain"} | ({budget} if budget else set())
    return [(student, arm, each) for student in students for each in sorted(budgets) for arm in compared_arms(spec)]


Scores = dict[Comparison, dict[tuple[int, int], float]]  # (student, arm, budget) → (seed, repeat) → final mIoU


def retrain_scores(records: Iterable[TrialRecord]) -> Scores:
    """Every finished retrain run's final mIoU, by (student, arm, budget) and (seed, repeat): one pass over the
    records."""
    scores: Scores = defaultdict(dict)
    for record in records:
        if record.phase == "retrain" and record.state == COMPLETE and record.final_miou is not None:
            group = (record.student, record.arm, record.budget or DEFAULT_BUDGET)
            scores[group][(record.seed, record.repeat)] = record.final_miou
    return scores


def differences(scores: Scores, comparison: Comparison) -> list[float]:
    """The paired differences (arm − base) of a comparison, in (seed, repeat) order."""
    student, arm, budget = comparison
    mine, base = scores.get(comparison, {}), scores.get((student, arm_named(arm).base, budget), {})
    return [mine[run] - base[run] for run in sorted(set(mine) & set(base))]


def study_verdicts(spec: StudySpec, records: list[TrialRecord], comparisons: list[Comparison],
                   rule: DecideConfig | None = None) -> StudyVerdicts:
    """The verdict of each comparison at alpha / len(comparisons); at most `rule.max_seeds` seeds (times the
    selection repeats) of pairs count."""
    rule = rule or decide_rule(spec)
    alpha_each = rule.alpha / max(1, len(comparisons))
    repeats = max([spec.settings.search.selection_repeats] + [r.repeat + 1 for r in records])
    scores = retrain_scores(records)
    found = {key: verdict(differences(scores, key), margin=rule.margin, alpha=alpha_each,
                          max_n=rule.max_seeds * repeats) for key in comparisons}
    return StudyVerdicts(found, alpha_each, rule)
