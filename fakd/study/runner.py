"""Study commands: sweep (create and run a study), resume, retrain.

A study runs in two phases, each one Ray Tune experiment holding every arm: the search (each arm
`search.num_samples` Optuna trials, interleaved, successive halving within each arm) and the retrain (each
arm's selected configuration with fresh seeds). One driver at a time holds a study (`StudyLock`); SIGINT
or SIGTERM stops it cleanly (`StopSignals`); everything it decides is in the study's trial records, so
`resume` finishes exactly the budget wherever the study was stopped, moved or copied to.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fakd import spec_yaml
from fakd.atomic import write_atomic
from fakd.errors import UserError
from fakd.faults import MachineFault, with_resume_hint
from fakd.plan import plan_metadata
from fakd.preflight import DataFacts, preflight
from fakd.results import FORMAT, TERMINAL, StudyDir, TrialRecord, front_json, open_study_dir, pareto_front, read_trials
from fakd.results.layout import (
    check_new_study_dir,
    check_no_links_out,
    check_outside_studies,
    is_unstarted,
    now,
    write_json,
)
from fakd.results.selection import confirmed_scores, select_best
from fakd.results.space import search_stages
from fakd.results.verdicts import sequential_rule, study_verdicts, table_comparisons
from fakd.spec import NAME_PATTERN, STORAGE_FILES, DecideConfig, StudySpec, load_spec
from fakd.study.cluster import check_cluster_resources, check_local_resources, ray_runtime
from fakd.study.handoff import StudyTeacher, TrialContext
from fakd.study.integrity import check_resumable
from fakd.study.lock import StudyLock, wait_for_earlier_training
from fakd.study.optuna_link import OptunaLink, open_storage
from fakd.study.phases import ConfirmPhase, Phase, RetrainPhase, SearchPhase, short_values
from fakd.study.requests import ExtendRequest, extend_request, never_started, retrain_request
from fakd.study.selection import outcome, plan_confirm, plan_retrain, retrain_seeds, seeds_done
from fakd.study.signals import StopSignals
from fakd.study.teacher import study_teacher
from fakd.study.tracking import WandbStreamer, sync_hint
from fakd.study.tune_glue import run_phase
from fakd.tracking import effective_tracking, git_commit
from fakd.vocab import arm_named

Log = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


def sweep(
    spec_path: str,
    overrides: Sequence[str] = (),
    *,
    storage: str | Path = "runs",
    name: str | None = None,
    address: str | None = None,
    teacher_checkpoint: str | None = None,
    no_wandb: bool = False,
    log: Log = _print,
) -> StudyDir:
    """Validate everything, create the study directory, train the teacher once, then search every arm."""
    overrides = list(overrides)
    if teacher_checkpoint:
        overrides.append(f"teacher.checkpoint={teacher_checkpoint}")
    spec = load_spec(spec_path, overrides)
    name = name or spec.name
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"{name!r} is not a study name: letters, digits, _ . + -, not starting with . "
                        "(no path separators)", key="--name")
    parent = _storage_dir(storage)
    root = parent / name
    check_new_study_dir(root)
    with StopSignals(log) as signals:  # from here on a signal stops the command with one line, exit 128 + signum
        facts = preflight(spec)
        if spec.settings.search.storage not in STORAGE_FILES:
            open_storage(spec, StudyDir(root))  # an unreachable database fails before anything is written
        resources = spec.settings.resources
        if address is None:
            check_local_resources(resources.cpu, resources.gpu, spec.path, resources.workers)
        with ray_runtime(address):
            signals.install()
            check_cluster_resources(resources.cpu, resources.gpu, spec.path, resources.workers)
            study = _make_study_dir(root)
            with StudyLock(study, "sweep"):
                _create(study, spec, facts, name, spec_path, overrides, no_wandb)
                log(f"study directory: {study.root}")
                _drive(study, spec, signals, log)
    return study


def resume(
    study_path: str | Path, *, address: str | None = None, no_wandb: bool = False, log: Log = _print
) -> StudyDir:
    """Finish an interrupted study: finished trials stay finished, unfinished ones continue from checkpoints."""
    study = open_study_dir(study_path)
    check_no_links_out(study)
    with _driving(study, "resume", address) as (spec, signals):
        log(f"resuming study {study.root}")
        _drive(study, spec, signals, log, no_wandb=no_wandb)
    return study


def retrain(
    study_path: str | Path, seeds: int | None = None, *, until_decided: bool = False, max_seeds: int | None = None,
    budget: str | None = None, address: str | None = None, no_wandb: bool = False, log: Log = _print,
) -> StudyDir:
    """Select-then-retrain at `budget` (default: the spec's `search.retrain_budget`), finishing the search first
    if it was interrupted: with `seeds`, that many seeds (more than the study has train only the missing ones);
    with `until_decided`, rounds of `search.decide.round` seeds until every comparison is decided or has
    `max_seeds` (default: `search.decide.max_seeds`). Every refusal happens before anything is written."""
    request = retrain_request(study_path, seeds, until_decided=until_decided, max_seeds=max_seeds, budget=budget)
    with _driving(request.study, "retrain", address) as (spec, signals):
        _drive(request.study, spec, signals, log, seeds=seeds, budget=request.budget, rule=request.rule,
               no_wandb=no_wandb)
    return request.study


def extend(
    study_path: str | Path, arms: str, overrides: Sequence[str] = (), *, address: str | None = None,
    no_wandb: bool = False, log: Log = _print,
) -> StudyDir:
    """Add `arms` (comma-separated) to a finished study: searched with its teacher (never trained again), search
    protocol and per-arm budget, then retrained on its seeds or by its decision rule. The study's own trials are not
    touched; its table then holds every comparison. Every refusal happens before anything is written."""
    study = open_study_dir(study_path)
    requests: list[ExtendRequest] = []

    def extended_spec(study: StudyDir) -> StudySpec:  # checked under the lock: what the driver extends
        requests.append(extend_request(study.root, arms, overrides))
        return requests[-1].spec

    with _driving(study, "extend", address, extended_spec) as (spec, signals):
        _write_extension(requests[-1], list(overrides))
        log(f"extending study {study.root} with {', '.join(requests[-1].arms)}")
        _drive(study, spec, signals, log, no_wandb=no_wandb)
    return study


def _write_extension(request: ExtendRequest, overrides: list[str]) -> None:
    """Record the added arms, then write the spec that has them (from then on `resume` finishes the extension)."""
    study, spec = request.study, request.spec
    meta = study.metadata()
    rule = sequential_rule(spec, meta)
    retrain_runs = rule.max_seeds if rule is not None else meta.get("retrain_seeds")
    extensions = [*(meta.get("extensions") or []), {"arms": request.arms, "overrides": overrides, "at": now()}]
    study.update_metadata(extensions=extensions, plan=plan_metadata(spec, retrain_runs=retrain_runs))
    write_atomic(study.spec, spec_yaml.dump(spec.raw))


def _drop_unstarted(study: StudyDir, records: list[TrialRecord], budget: str, seeds: int, log: Log) -> None:
    """`retrain --seeds N` below the seeds planned: remove the planned retrain trials of later seeds that never
    started (a finished or started one is never removed; `retrain` refused those already)."""
    dropped = [r for r in records if r.phase == "retrain" and r.budget == budget and r.seed > seeds
               and never_started(study, r)]
    for record in dropped:
        shutil.rmtree(study.trial_dir(record.key))
        records.remove(record)
    if dropped:
        log(f"dropped {len(dropped)} planned retrain runs of seeds above {seeds} ({budget}) that never started")


@contextlib.contextmanager
def _driving(study: StudyDir, command: str, address: str | None,
             read_spec: Callable[[StudyDir], StudySpec] = StudyDir.read_spec,
             ) -> Iterator[tuple[StudySpec, StopSignals]]:
    """The frame of resume, retrain and extend: lock the study, read its spec (`read_spec`, under the lock), check
    what it needs, connect to Ray, take signals."""
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(StopSignals(_print))
        stack.enter_context(StudyLock(study, command))
        spec = read_spec(study)
        preflight(spec, teacher_checkpoint=False)  # the teacher is in the study already
        resources = spec.settings.resources
        if address is None:
            check_local_resources(resources.cpu, resources.gpu, spec.path, resources.workers)
        stack.enter_context(ray_runtime(address))
        signals.install()
        check_cluster_resources(resources.cpu, resources.gpu, spec.path, resources.workers)
        yield spec, signals


def _storage_dir(storage: str | Path) -> Path:
    """The absolute `--storage` directory, checked (not created) so that nothing is half-written; never inside a
    study."""
    path = Path(storage).expanduser().resolve()
    check_outside_studies(path, "--storage")
    return path


def _make_study_dir(root: Path) -> StudyDir:
    """Create the new study's directory (its parent checked writable by `_storage_dir`): one line if that fails."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {root}: {exc.strerror}", key="--storage") from None
    return StudyDir(root)


def _create(study: StudyDir, spec: StudySpec, facts: DataFacts, name: str, spec_path: str,
            overrides: list[str], no_wandb: bool) -> None:
    """Write the new study's spec and metadata (under its lock, into an empty directory)."""
    if not is_unstarted(study.root):
        raise UserError(f"{study.root} is no longer empty (another sweep created it)", key="--name")
    external = spec.settings.search.storage not in STORAGE_FILES
    write_atomic(study.spec, spec_yaml.dump(spec.raw))
    write_json(study.marker, {
        "format": FORMAT, "name": name, "created": now(), "spec_source": str(Path(spec_path).resolve()),
        "overrides": overrides, "no_wandb": no_wandb,
        # a shared database holds many studies: this study's Optuna studies get a name of their own
        "optuna_prefix": f"{name}-{uuid.uuid4().hex[:8]}" if external else name,
        "data": {"num_classes": facts.num_classes, "class_names": facts.class_names},
        "plan": plan_metadata(spec),  # what status and the report set the compute spent against
    })


def _drive(study: StudyDir, spec: StudySpec, signals: StopSignals, log: Log, *, seeds: int | None = None,
           budget: str | None = None, rule: DecideConfig | None = None, no_wandb: bool = False) -> None:
    """Teacher, search, then retrain when seeds are asked for: whatever of it is not done yet.

    Nothing is written before the study's files (metadata, Optuna storage, every record) were read, nor while
    processes of an earlier driver still train in the study."""
    wait_for_earlier_training(study, log)
    meta = study.metadata()
    prefix = meta.get("optuna_prefix")
    if not isinstance(prefix, str):
        raise UserError(f"{study.marker}: the study's metadata has no optuna_prefix; restore it from a copy of the "
                        "study, nothing was changed", key="STUDY_DIR")
    records = read_trials(study)  # a corrupt record stops us here, before anything is written
    searched = [r for r in records if r.phase == "search"]
    optuna = OptunaLink(spec, open_storage(spec, study, existing=bool(searched)), prefix)
    optuna.verify(searched)
    optuna.claim(study)
    check_resumable(study, spec, meta, records)
    check_no_links_out(study)
    stages = search_stages(spec)
    search = SearchPhase(study, spec, log, optuna, searched, stages[0])
    if no_wandb:
        study.update_metadata(no_wandb=True)
    if seeds:
        _drop_unstarted(study, records, budget or "", seeds, log)
        raised = bool(meta.get("retrain_finished")) and seeds > seeds_done(records, budget or "")
        study.update_metadata(retrain_seeds=seeds, retrain_budget=budget, retrain_mode="fixed",
                              seeds_raised=bool(meta.get("seeds_raised")) or raised,
                              plan=plan_metadata(spec, retrain_runs=seeds))
    elif rule is not None:
        study.update_metadata(retrain_mode="sequential", decide=rule.model_dump(), retrain_budget=budget,
                              plan=plan_metadata(spec, retrain_runs=rule.max_seeds))
    elif not isinstance(meta.get("plan"), dict):  # a study made before sweep stored its plan
        study.update_metadata(plan=plan_metadata(spec))
    teacher = study_teacher(study, spec, log)
    signals.check()
    context = TrialContext(str(study.root), teacher)
    for stage, arms in enumerate(stages):
        if stage > 0:  # the add-on arms, on the selections of the stages before
            search = SearchPhase(study, spec, log, optuna, read_trials(study, "search"), arms)
        if not search.is_finished():
            search_line = (f"search: {search.budget()} trials ({len(arms)} arm{'s' if len(arms) != 1 else ''} × "
                           f"{spec.settings.search.num_samples}")
            if spec.settings.search.selection_repeats > 1:
                search_line += f" × {spec.settings.search.selection_repeats} repeats"
            done = sum(r.state in TERMINAL for r in search.records.values())
            inherit = f"; {', '.join(arms)} on their base arms' selections" if stage > 0 else ""
            log(f"{search_line}), {done} done{inherit}")
            _run(search, study, spec, context, signals, log)
        if spec.settings.search.confirmation is not None:
            _confirm(study, spec, context, signals, log, arms)
    if not study.metadata().get("search_finished"):
        study.update_metadata(search_finished=now())
    searched = read_trials(study, "search")
    _summarise(spec, searched, log)
    if "params" in spec.settings.search.objectives:
        front = pareto_front(searched)
        write_json(study.root / "pareto.json", front_json(front))
        log(f"Pareto front of mIoU vs parameters ({len(front)} trials): {study.root / 'pareto.json'}")
    hint = sync_hint(study.root) if effective_tracking(spec, study).wandb else None
    if hint:
        log(hint)
    meta = study.metadata()
    budget = meta.get("retrain_budget") or spec.settings.search.retrain_budget
    rule = sequential_rule(spec, meta)
    seeds = meta.get("retrain_seeds") or spec.settings.search.retrain_seeds
    if rule is not None:
        _retrain_until_decided(study, spec, context, rule, budget, signals, log)
    elif seeds:
        _retrain(study, spec, context, seeds, budget, signals, log)


def _run(phase: Phase, study: StudyDir, spec: StudySpec, context: TrialContext, signals: StopSignals,
         log: Log) -> None:
    resources, search = spec.settings.resources, spec.settings.search
    started = time.perf_counter()
    run_phase(phase, context, cpu=resources.cpu, gpu=resources.gpu, max_concurrent=search.max_concurrent,
              max_failures=search.max_failures, tune_dir=study.tune,
              callbacks=_callbacks(spec, study, phase, context.teacher), signals=signals, workers=resources.workers)
    signals.check()
    if phase.fault is not None:
        raise MachineFault(with_resume_hint(f"{phase.fault}; the {phase.name} stopped with its trials kept",
                                            study.root))
    if phase.halt is not None:
        raise UserError(f"{phase.halt}; the {phase.name} stopped with its trials kept: fix it, then resume with: "
                        f"python launch.py resume {study.root}")
    if not phase.is_finished():
        unfinished = sorted(k for k, r in phase.records.items() if r.state not in TERMINAL)
        raise RuntimeError(f"the {phase.name} ended with unfinished trials ({', '.join(unfinished[:5])}); "
                           f"`launch.py resume {study.root}` continues them")
    log(f"{phase.name} finished in {time.perf_counter() - started:.0f} s")


def _confirm(study: StudyDir, spec: StudySpec, context: TrialContext, signals: StopSignals, log: Log,
             arms: Sequence[str]) -> None:
    """Train the `search.confirm.top` best search trials of `arms` again with `search.confirm.seeds` fresh seeds."""
    plan = [r for r in plan_confirm(spec, read_trials(study)) if r.arm in arms]
    phase = ConfirmPhase(study, spec, log, plan)
    if not phase.is_finished():
        confirm = spec.settings.search.confirmation
        log(f"confirm: {phase.budget()} runs (each arm's {confirm.top} best search trials × {confirm.seeds} fresh "
            "seeds, held-out split)")
        _run(phase, study, spec, context, signals, log)
        study.update_metadata(confirm_finished=now())
    records = read_trials(study)
    confirmed = confirmed_scores(records)
    for (arm, _, _), record in sorted(select_best(records).items()):
        runs = confirmed.get(record.key, [])
        if runs and arm in arms:
            log(f"[{arm}] selected {record.key}: mean confirmed mIoU {sum(runs) / len(runs):.4f} over {len(runs)} "
                f"seeds ({short_values(record.values)})")


def _summarise(spec: StudySpec, searched: list[TrialRecord], log: Log) -> None:
    for arm in spec.settings.arms:
        states = Counter(outcome(r) for r in searched if r.arm == arm)
        best = max((r.final_miou for r in searched if r.arm == arm and r.final_miou is not None), default=None)
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        log(f"[{arm}] {counts}" + (f"; best held-out mIoU {best:.4f}" if best is not None else ""))


def _retrain(study: StudyDir, spec: StudySpec, context: TrialContext, seeds: int, budget: str,
             signals: StopSignals, log: Log) -> None:
    plan, problems = plan_retrain(spec, read_trials(study), retrain_seeds(spec, seeds), budget)
    phase = RetrainPhase(study, spec, log, plan)
    if not phase.is_finished():
        iters = {r.arm: r.total_iters for r in plan}
        log(f"retrain: {phase.budget()} runs (each arm's best configuration × {seeds} seeds, {budget}: "
            + ", ".join(f"{arm} {n} iterations" for arm, n in iters.items()) + ")")
        _run(phase, study, spec, context, signals, log)
        study.update_metadata(retrain_finished=now())
    _refuse_unselected(problems)


def _refuse_unselected(problems: dict[str, str]) -> None:
    """After a retrain: one line for the arms that had no finished search trial to retrain."""
    if problems:
        arm, reason = next(iter(problems.items()))
        raise UserError(reason + (f" (and {len(problems) - 1} more arms)" if len(problems) > 1 else ""),
                        key=f"arms.{arm}")


def _retrain_until_decided(study: StudyDir, spec: StudySpec, context: TrialContext, rule: DecideConfig,
                           budget: str, signals: StopSignals, log: Log) -> None:
    """Rounds of `rule.round` fresh seeds, shared by the arms of the comparisons still undecided, until every
    comparison is decided or has `rule.max_seeds` seeds. Each round (its seed count and arms) is recorded in the
    metadata before its runs are planned: a resumed driver finishes the last recorded round, then goes on as an
    uninterrupted one would."""
    rounds = [r for r in study.metadata().get("decide_rounds") or [] if r.get("budget") == budget]
    first = min(rule.max_seeds, max(rule.round, spec.settings.search.retrain_seeds))
    named = {arm for r in rounds for arm in r.get("arms", [])}
    added = [arm for arm in spec.settings.arms if arm not in named]
    if rounds and not added:
        target, arms = int(rounds[-1]["seeds"]), list(rounds[-1]["arms"])
    elif rounds:  # arms added since the last round (`extend`): their first round, with the arms they are compared to
        needed = set(added) | {arm_named(arm).base for arm in added}
        target, arms = first, [arm for arm in spec.settings.arms if arm in needed]
        _record_round(study, budget, target, arms)
    else:
        target, arms = max(first, seeds_done(read_trials(study), budget)), list(spec.settings.arms)
        _record_round(study, budget, target, arms)
    while True:
        plan, problems = plan_retrain(spec, read_trials(study), retrain_seeds(spec, target), budget, arms)
        phase = RetrainPhase(study, spec, log, plan)
        if not phase.is_finished():
            log(f"retrain round to {target} seeds ({budget}): {', '.join(arms)}; "
                f"{phase.budget() - sum(r.state in TERMINAL for r in phase.records.values())} runs to go")
            _run(phase, study, spec, context, signals, log)
        records = read_trials(study)
        found = study_verdicts(spec, records, table_comparisons(spec, records, budget), rule)
        log("decisions at " + f"{target} seeds: " + "; ".join(
            f"{arm} vs {arm_named(arm).base}: {v.decision}" + (f" at {v.decided_at}" if v.decided_at else "")
            for (_, arm, _), v in found.verdicts.items()))
        open_comparisons = found.undecided()
        if not open_comparisons or target >= rule.max_seeds:
            break
        needed = {arm for _, arm, _ in open_comparisons} | {arm_named(arm).base for _, arm, _ in open_comparisons}
        arms = [arm for arm in spec.settings.arms if arm in needed]
        target = min(target + rule.round, rule.max_seeds)
        _record_round(study, budget, target, arms)
    study.update_metadata(retrain_finished=now())
    _refuse_unselected(problems)


def _record_round(study: StudyDir, budget: str, seeds: int, arms: list[str]) -> None:
    """Append a sequential retrain's next round to the study's metadata (before any of its runs is planned)."""
    rounds = list(study.metadata().get("decide_rounds") or [])
    study.update_metadata(decide_rounds=[*rounds, {"budget": budget, "seeds": seeds, "arms": arms}])


def _callbacks(spec: StudySpec, study: StudyDir, phase: Phase, teacher: StudyTeacher | None) -> list[Any]:
    """Driver-side callbacks of a phase: W&B streaming when the spec asks for it."""
    tracking = effective_tracking(spec, study)
    if not tracking.wandb:
        return []
    shared = {"teacher_id": teacher.key if teacher else None, "git_commit": git_commit(), "study": spec.name,
              "phase": phase.name}
    return [WandbStreamer(tracking, spec.name, str(study.root), phase.name, shared, phase.records)]
