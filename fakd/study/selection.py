"""Select-then-retrain: per arm (and student, and selection repeat), the search trial whose finished model
scored best on the held-out split, retrained with fresh seeds on the full training split.

Budgets: `equal-iters` retrains every arm for `train.iters` iterations; `equal-time` gives every arm the
wall-clock the baseline's iterations cost (with the same student), converted to iterations from each arm's
measured time per iteration in the search (a distilling arm also pays for the teacher's forward pass, so it gets fewer).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Collection

from fakd.errors import UserError
from fakd.results import FAILED, TrialRecord
from fakd.results.selection import best_search_trials, select_best
from fakd.spec import StudySpec
from fakd.vocab import BUDGET_KEY_SUFFIX, DEFAULT_BUDGET, REFERENCE_ARM


def outcome(record: TrialRecord) -> str:
    """How a trial ended, in a word: complete, pruned, diverged, errored (or still pending/running)."""
    if record.state == FAILED:
        return "diverged" if record.reason == "diverged" else "errored"
    return record.state.lower()


def retrain_seeds(spec: StudySpec, count: int) -> list[int]:
    """Seeds never used by the search (which trains with `train.seed`); more seeds continue the sequence."""
    return [spec.defaults.train.seed + 1 + i for i in range(count)]


CONFIRM_SEED_OFFSET = 10_000
"""Confirmation seeds start here above `train.seed`: never a search seed, never a retrain seed, so a confirmed
selection carries no luck of its own into the retrain it is compared on."""


def confirm_seeds(spec: StudySpec, count: int) -> list[int]:
    return [spec.defaults.train.seed + CONFIRM_SEED_OFFSET + i for i in range(count)]


def plan_confirm(spec: StudySpec, records: list[TrialRecord]) -> list[TrialRecord]:
    """Every confirmation run: each arm's `search.confirm.top` best search trials, each with
    `search.confirm.seeds` fresh seeds, at the search's iterations on its held-out split."""
    confirm = spec.settings.search.confirmation
    if confirm is None:
        return []
    plan = []
    tops = best_search_trials(records, confirm.top)
    for group in sorted(tops, key=lambda g: (spec.settings.arms.index(g[0]), g[1], g[2])):
        for source in tops[group]:
            base = source.config
            for seed in confirm_seeds(spec, confirm.seeds):
                cfg = base.model_copy(update={"train": base.train.model_copy(update={"seed": seed})})
                plan.append(TrialRecord(
                    key=f"confirm/{source.key.split('/')[-1]}-seed{seed}", phase="confirm", arm=source.arm,
                    index=seed, values=dict(source.values), run=cfg.model_dump(mode="json"), student=source.student,
                    seed=seed, repeat=source.repeat, source=source.key))
    return plan


def seeds_done(records: list[TrialRecord], budget: str = DEFAULT_BUDGET) -> int:
    """How many seeds the study's retrain at `budget` has planned (the most of any configuration)."""
    per_source = Counter(r.source for r in records if r.phase == "retrain" and r.budget == budget)
    return max(per_source.values(), default=0)


def step_seconds(records: list[TrialRecord]) -> dict[tuple[str, str], float]:
    """Each (arm, student)'s measured wall time per training iteration: the median over its search trials."""
    found: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        if record.phase == "search" and record.seconds_per_iter is not None:
            found[(record.arm, record.student)].append(record.seconds_per_iter)
    return {group: statistics.median(values) for group, values in found.items()}


def budget_iters(spec: StudySpec, records: list[TrialRecord], budget: str) -> dict[tuple[str, str], int]:
    """Iterations each (arm, student) of the search retrains for: `train.iters`, or at equal time the wall-clock
    of `train.iters` iterations of the reference arm with the same student, divided by the arm's own time per
    iteration with that student."""
    iters = spec.defaults.train.iters
    groups = sorted({(r.arm, r.student) for r in records if r.phase == "search"})
    if budget == DEFAULT_BUDGET:
        return dict.fromkeys(groups, iters)
    if REFERENCE_ARM not in spec.settings.arms:
        raise UserError(f"equal-time gives every arm the wall-clock of the {REFERENCE_ARM}'s iterations; this study "
                        f"has no {REFERENCE_ARM} arm", key="--budget")
    seconds = step_seconds(records)
    missing = [f"{arm} ({student})" for arm, student in groups
               if (arm, student) not in seconds or (REFERENCE_ARM, student) not in seconds]
    if missing:
        raise UserError(f"equal-time needs the measured time per iteration of each arm and of the {REFERENCE_ARM} "
                        f"with the same student; {', '.join(missing)} has none (no finished search evaluation)",
                        key="--budget")
    return {(arm, student): max(1, round(iters * seconds[(REFERENCE_ARM, student)] / seconds[(arm, student)]))
            for arm, student in groups}


def plan_retrain(spec: StudySpec, records: list[TrialRecord], seeds: list[int], budget: str = DEFAULT_BUDGET,
                 arms: Collection[str] | None = None) -> tuple[list[TrialRecord], dict[str, str]]:
    """Every retrain trial of `seeds` at `budget` of `arms` (default: every arm; existing ones as recorded),
    and why an arm has nothing to retrain."""
    search = [r for r in records if r.phase == "search"]
    by_source: dict[str, list[TrialRecord]] = defaultdict(list)
    for record in records:
        if record.phase == "retrain":
            by_source[record.source or ""].append(record)
    iters = budget_iters(spec, records, budget)
    sources = {(r.arm, r.repeat, r.student): r for r in search if r.key in by_source}  # kept once chosen
    selected = {**select_best(records), **sources}
    plan: list[TrialRecord] = []
    for source in sorted(selected.values(), key=lambda r: (spec.settings.arms.index(r.arm), r.repeat, r.index)):
        if arms is not None and source.arm not in arms:
            continue
        base = source.config
        for seed in seeds:
            train = base.train.model_copy(update={"seed": seed, "iters": iters[(source.arm, source.student)]})
            cfg = base.model_copy(update={"split": "val", "train": train})
            plan.append(TrialRecord(
                key=f"retrain/{source.key.split('/')[-1]}-seed{seed}{BUDGET_KEY_SUFFIX[budget]}", phase="retrain",
                arm=source.arm, index=seed, values=dict(source.values), run=cfg.model_dump(mode="json"),
                student=source.student, seed=seed, repeat=source.repeat, source=source.key, budget=budget))
    problems = {}
    for arm in spec.settings.arms:
        if not any(r.arm == arm for r in selected.values()):
            ended = Counter(outcome(r) for r in search if r.arm == arm)
            detail = ", ".join(f"{n} {what}" for what, n in sorted(ended.items())) or "no trials"
            problems[arm] = f"no search trial of {arm} finished, so it has no configuration to retrain ({detail})"
    return plan, problems
