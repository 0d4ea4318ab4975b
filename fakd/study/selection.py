"""Select-then-retrain: per arm (and student, and selection repeat), the search trial whose finished model
scored best on the held-out split, retrained with fresh seeds on the full training split.

Budgets: `equal-iters` retrains every arm for `train.iters` iterations; `equal-time` gives every arm the
wall-clock the baseline's iterations cost, converted to iterations from each arm's measured time per
iteration in the search (a distilling arm also pays for the teacher's forward pass, so it gets fewer).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from fakd.config import RunConfig
from fakd.errors import UserError
from fakd.results import FAILED, TrialRecord
from fakd.spec import StudySpec

Group = tuple[str, int, str]  # (arm, repeat, student)
KEY_SUFFIX = {"equal-iters": "", "equal-time": "-time"}


def outcome(record: TrialRecord) -> str:
    """How a trial ended, in a word: complete, pruned, diverged, errored (or still pending/running)."""
    if record.state == FAILED:
        return "diverged" if record.reason == "diverged" else "errored"
    return record.state.lower()


def retrain_seeds(spec: StudySpec, count: int) -> list[int]:
    """Seeds never used by the search (which trains with `train.seed`); more seeds continue the sequence."""
    return [spec.defaults.train.seed + 1 + i for i in range(count)]


def select_best(records: list[TrialRecord]) -> dict[Group, TrialRecord]:
    """The best finished search trial of each (arm, repeat, student); ties go to the earlier trial."""
    best: dict[Group, TrialRecord] = {}
    for record in sorted(records, key=lambda r: r.index):
        if record.phase != "search" or record.final_miou is None:
            continue
        group = (record.arm, record.repeat, record.student)
        if group not in best or record.final_miou > best[group].final_miou:
            best[group] = record
    return best


def seeds_done(records: list[TrialRecord], budget: str = "equal-iters") -> int:
    """How many seeds the study's retrain at `budget` has planned (the most of any configuration)."""
    per_source = Counter(r.source for r in records if r.phase == "retrain" and r.budget == budget)
    return max(per_source.values(), default=0)


def step_seconds(records: list[TrialRecord]) -> dict[str, float]:
    """Each arm's measured wall time per training iteration: the median over its search trials."""
    per_arm: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.phase == "search" and record.seconds_per_iter is not None:
            per_arm[record.arm].append(record.seconds_per_iter)
    return {arm: statistics.median(values) for arm, values in per_arm.items()}


def budget_iters(spec: StudySpec, records: list[TrialRecord], budget: str) -> dict[str, int]:
    """Iterations each arm retrains for: `train.iters`, or at equal time the baseline's `train.iters` worth of
    wall-clock divided by the arm's own time per iteration."""
    iters = spec.defaults.train.iters
    if budget == "equal-iters":
        return {arm: iters for arm in spec.settings.arms}
    if "baseline" not in spec.settings.arms:
        raise UserError("equal-time gives every arm the wall-clock of the baseline's iterations; this study has no "
                        "baseline arm", key="--budget")
    seconds = step_seconds(records)
    missing = [arm for arm in spec.settings.arms if arm not in seconds]
    if missing:
        raise UserError(f"equal-time needs each arm's measured time per iteration; {', '.join(missing)} has no "
                        "finished search evaluation", key="--budget")
    return {arm: max(1, round(iters * seconds["baseline"] / seconds[arm])) for arm in spec.settings.arms}


def plan_retrain(spec: StudySpec, records: list[TrialRecord], seeds: list[int],
                 budget: str = "equal-iters") -> tuple[list[TrialRecord], dict[str, str]]:
    """Every retrain trial of `seeds` at `budget` (existing ones as recorded), and why an arm has nothing
    to retrain."""
    search = [r for r in records if r.phase == "search"]
    by_source: dict[str, list[TrialRecord]] = defaultdict(list)
    for record in records:
        if record.phase == "retrain":
            by_source[record.source or ""].append(record)
    iters = budget_iters(spec, records, budget)
    sources = {(r.arm, r.repeat, r.student): r for r in search if r.key in by_source}  # kept once chosen
    selected = {**select_best(search), **sources}
    plan: list[TrialRecord] = []
    for source in sorted(selected.values(), key=lambda r: (spec.settings.arms.index(r.arm), r.repeat, r.index)):
        base = RunConfig.model_validate(source.run)
        for seed in seeds:
            train = base.train.model_copy(update={"seed": seed, "iters": iters[source.arm]})
            cfg = base.model_copy(update={"phase": "final", "train": train})
            plan.append(TrialRecord(
                key=f"retrain/{source.key.split('/')[-1]}-seed{seed}{KEY_SUFFIX[budget]}", phase="retrain",
                arm=source.arm, index=seed, values=dict(source.values), run=cfg.model_dump(mode="json"),
                student=source.student, seed=seed, repeat=source.repeat, source=source.key, budget=budget))
    problems = {}
    for arm in spec.settings.arms:
        if not any(r.arm == arm for r in selected.values()):
            ended = Counter(outcome(r) for r in search if r.arm == arm)
            detail = ", ".join(f"{n} {what}" for what, n in sorted(ended.items())) or "no trials"
            problems[arm] = f"no search trial of {arm} finished, so it has no configuration to retrain ({detail})"
    return plan, problems
