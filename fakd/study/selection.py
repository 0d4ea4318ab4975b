"""Select-then-retrain: per arm (and student, and selection repeat), the search trial whose finished model
scored best on the held-out split, retrained with fresh seeds on the full training split."""

from __future__ import annotations

from collections import Counter, defaultdict

from fakd.config import RunConfig
from fakd.results import FAILED, TrialRecord
from fakd.spec import StudySpec

Group = tuple[str, int, str]  # (arm, repeat, student)


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


def seeds_done(records: list[TrialRecord]) -> int:
    """How many seeds the study's retrain has planned (the most of any configuration)."""
    per_source = Counter(r.source for r in records if r.phase == "retrain")
    return max(per_source.values(), default=0)


def plan_retrain(spec: StudySpec, records: list[TrialRecord], seeds: list[int]) -> tuple[list[TrialRecord],
                                                                                          dict[str, str]]:
    """Every retrain trial of `seeds` (existing ones as recorded), and why an arm has nothing to retrain."""
    search = [r for r in records if r.phase == "search"]
    by_source: dict[str, list[TrialRecord]] = defaultdict(list)
    for record in records:
        if record.phase == "retrain":
            by_source[record.source or ""].append(record)
    sources = {(r.arm, r.repeat, r.student): r for r in search if r.key in by_source}  # kept once chosen
    selected = {**select_best(search), **sources}
    plan: list[TrialRecord] = []
    for source in sorted(selected.values(), key=lambda r: (spec.settings.arms.index(r.arm), r.repeat, r.index)):
        base = RunConfig.model_validate(source.run)
        for seed in seeds:
            cfg = base.model_copy(update={"phase": "final", "train": base.train.model_copy(update={"seed": seed})})
            plan.append(TrialRecord(
                key=f"retrain/{source.key.split('/')[-1]}-seed{seed}", phase="retrain", arm=source.arm, index=seed,
                values=dict(source.values), run=cfg.model_dump(mode="json"), student=source.student, seed=seed,
                repeat=source.repeat, source=source.key, budget="equal-iters"))
    problems = {}
    for arm in spec.settings.arms:
        if not any(r.arm == arm for r in selected.values()):
            ended = Counter(r.reason if r.state == FAILED else r.state.lower() for r in search if r.arm == arm)
            detail = ", ".join(f"{n} {what}" for what, n in sorted(ended.items())) or "no trials"
            problems[arm] = f"no search trial of {arm} finished, so it has no configuration to retrain ({detail})"
    return plan, problems
