"""The checks of a request to a study that come before its driver starts: they read the study and its spec
only, so a refused command answers at once, without loading Ray, torch or timm."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakd.errors import UserError
from fakd.results import PENDING, TERMINAL, StudyDir, TrialRecord, open_study_dir, read_trials
from fakd.results.layout import check_no_links_out
from fakd.results.space import arm_space
from fakd.results.verdicts import compared_arms, decide_rule
from fakd.spec import DecideConfig, StudySpec, apply_override, validate_spec
from fakd.study.selection import seeds_done
from fakd.vocab import BUDGETS, arm_named, arm_names, arm_order

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


@dataclass(frozen=True)
class ExtendRequest:
    """Arms a study accepts: its spec with them added (the study's own arms unchanged in every respect)."""

    study: StudyDir
    spec: StudySpec
    arms: list[str]


ADD_ON = "search.add_on"


def extend_request(study_path: str | Path, arms_text: str, overrides: Sequence[str] = ()) -> ExtendRequest:
    """`extend`'s arguments checked against the study (one line per refusal; nothing is written).

    The new arms get the study's teacher, search protocol, budget and seeds: `--set` takes only keys that no arm of
    the study uses and a new arm does (its own loss term, a search distribution for it), and `search.add_on` while
    no arm of the study is an add-on arm (it changed nothing for them). Where it is not set and no arm of the study
    was an add-on arm, it takes the default that a study with every arm from the start would have."""
    study = open_study_dir(study_path)
    check_no_links_out(study)
    old = study.read_spec()
    existing = list(old.settings.arms)
    unfinished = [r.key for r in read_trials(study) if r.state not in TERMINAL]
    if unfinished:
        raise UserError(f"{study.root} has unfinished trials ({', '.join(unfinished[:3])}"
                        f"{', ...' if len(unfinished) > 3 else ''}); finish it first with: python launch.py resume "
                        f"{study.root}", key="STUDY_DIR")
    named = [name.strip() for name in arms_text.split(",") if name.strip()]
    arms = sorted(set(named), key=arm_order)  # the vocabulary's order: a base arm before the arms compared with it
    raw = copy.deepcopy(old.raw)
    raw["arms"] = existing + arms
    search = raw.setdefault("search", {})
    add_on_mattered = any(arm_named(arm).add_on for arm in existing)
    if not add_on_mattered:
        search.pop("add_on", None)  # resolved again for the arms the study now has, unless set below
    seen: set[str] = set()
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in seen:
            raise UserError(f"--set {key} is given twice; give each key once", key=key)
        seen.add(key)
        _check_extension_key(key, existing, arms, add_on_mattered)
        apply_override(raw, item, str(study.spec))
    methods = raw.get("methods") if isinstance(raw.get("methods"), dict) else {}
    _check_new_arms(named, arms, existing, arm_names(methods))
    spec = validate_spec(raw, str(study.spec), tuple(overrides))
    for arm in existing:  # the keys checked above cannot change an existing arm: this says so once more
        if _used(old, arm) != _used(spec, arm) or arm_space(old, arm) != arm_space(spec, arm):
            raise UserError(f"would change what arm {arm} of the study ran with; nothing was changed",
                            key="--set")
    return ExtendRequest(study, spec, arms)


def _used(spec: StudySpec, arm: str) -> dict[str, Any]:
    """The settings `arm` runs with by default (dotted keys), leaving out the terms it does not use."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                walk(child, f"{prefix}.{name}" if prefix else name)
        elif arm_named(arm).uses(prefix):
            flat[prefix] = node

    walk(spec.run_config(arm).model_dump(mode="json"), "")
    return flat


def _check_new_arms(named: list[str], arms: list[str], existing: list[str], accepted: tuple[str, ...]) -> None:
    """The arms `--arms` names (`named`, as given; `arms`, each once in the vocabulary's order) are each known (built
    in, or a method's the study or a `--set` declares), new, named once and with their base."""
    if not named:
        raise UserError(f"names no arm; accepted: {', '.join(a for a in accepted if a not in existing)}",
                        key="--arms")
    for arm in named:
        if arm not in accepted:
            raise UserError(f"unknown arm {arm!r}; accepted: {', '.join(accepted)} (a plug-in method's arms once "
                            "--set methods.<name>.loss=module:function declares it)", key="--arms")
        if arm in existing:
            raise UserError(f"{arm} is an arm of the study already (arms: {', '.join(existing)})", key="--arms")
        if named.count(arm) > 1:
            raise UserError(f"names {arm} twice", key="--arms")
    for arm in arms:
        base = arm_named(arm).base
        if base is not None and base not in existing and base not in arms:
            raise UserError(f"{arm} is compared with its base arm {base}, which the study does not have: add both "
                            f"(--arms {base},{arm})", key="--arms")


def _check_extension_key(key: str, existing: list[str], arms: list[str], add_on_mattered: bool) -> None:
    """A `--set` key `extend` accepts: one that only the new arms use (the equal budget holds), or search.add_on
    where it changed nothing for the study's arms."""
    if key == ADD_ON:
        if add_on_mattered:
            raise UserError(f"decided how the study's add-on arms were searched; extend keeps it (arms: "
                            f"{', '.join(existing)})", key=key)
        return
    used_before = [arm for arm in existing if arm_named(arm).uses(key)]
    if used_before:
        raise UserError(f"is a setting of the study's arms ({', '.join(used_before)}); added arms get the study's "
                        "teacher, search, budget and seeds, so extend takes only keys of the new arms", key=key)
    if not any(arm_named(arm).uses(key) for arm in arms):
        raise UserError(f"changes nothing in the new arms ({', '.join(arms)})", key=key)
