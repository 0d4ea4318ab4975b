"""The checks of a request to a study that come before its driver starts: they read the study and its spec
only, so a refused command answers at once, without loading Ray, torch or timm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fakd.errors import UserError
from fakd.results import PENDING, StudyDir, TrialRecord, open_study_dir, read_trials
from fakd.results.layout import check_no_links_out
from fakd.results.verdicts import compared_arms, decide_rule
from fakd.spec import DecideConfig, StudySpec
from fakd.study.selection import seeds_done
from fakd.vocab import BUDGETS

MAX_SEEDS = 1000
"""The most seeds `retrain --seeds` accepts: each is a run of every arm."""


@dataclass(frozen=True)
class RetrainRequest:
    """A retrain the study accepts: its budget and, for `--until-decided`, the decision settings."""

    study: StudyDir
    budget: str
    rule: DecideConfig | None


def retrain_request(study_path: str | Path, seeds: int | None = None, *, until_decided: bool = False,
                    max_seeds: int | None = None, budget: str | None = None) -> RetrainRequest:
    """`retrain`'s arguments checked against the study (one line per refusal; nothing is written)."""
    if (seeds is None) == (not until_decided):
        raise UserError("takes either --seeds N or --until-decided", key="--seeds")
    if max_seeds is not None and not until_decided:
        raise UserError("applies to --until-decided only", key="--max-seeds")
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"takes 1 to {MAX_SEEDS} seeds, got {seeds}", key="--seeds")
    if budget is not None and budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; accepted: {', '.join(BUDGETS)}", key="--budget")
    study = open_study_dir(study_path)
    check_no_links_out(study)
    spec = study.read_spec()
    chosen = budget or spec.settings.search.retrain_budget
    retrained = read_trials(study, "retrain")
    done = seeds_done(retrained, chosen)
    rule = _until_decided_rule(study, spec, done, max_seeds) if until_decided else None
    started = max((r.seed for r in retrained if r.budget == chosen and not never_started(study, r)), default=0)
    if seeds is not None and seeds < started:
        raise UserError(f"the study already has {started} retrain seeds at {chosen} that started or finished; --seeds "
                        f"takes {started} or more (more seeds train only the missing ones; planned seeds that never "
                        "started are dropped below it)", key="--seeds")
    return RetrainRequest(study, chosen, rule)


def never_started(study: StudyDir, record: TrialRecord) -> bool:
    """Whether a planned trial never ran: PENDING, nothing reported, no checkpoint."""
    return (record.state == PENDING and not record.results
            and not (study.trial_dir(record.key) / "checkpoints").exists())


def _until_decided_rule(study: StudyDir, spec: StudySpec, done: int, max_seeds: int | None) -> DecideConfig:
    """The decision settings of `retrain --until-decided`, refused (one line) where they cannot apply."""
    if done == 0:
        raise UserError(f"{study.root} has no retrain runs to decide from; retrain a first round with "
                        f"`launch.py retrain {study.root} --seeds N`, or sweep with search.decide in the spec",
                        key="--until-decided")
    if not compared_arms(spec):
        raise UserError(f"no arm of this study has its base arm ({', '.join(spec.settings.arms)}), so there is "
                        "no comparison to decide", key="--until-decided")
    rule = decide_rule(spec)
    if max_seeds is not None:
        rule = rule.model_copy(update={"max_seeds": max_seeds})
    if rule.max_seeds < done:
        raise UserError(f"the study already has {done} retrain seeds; the maximum takes {done} or more",
                        key="--max-seeds" if max_seeds is not None else "search.decide.max_seeds")
    if rule.max_seeds < 2:
        raise UserError(f"must be at least 2 (a paired difference needs two seeds), got {max_seeds}", key="--max-seeds")
    return rule
