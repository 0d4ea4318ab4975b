"""`launch.py plan`: what a study will cost before it is launched, in device-hours per arm and in wall clock.

The bill multiplies two things: what one training iteration and one evaluation cost (measured here by training
each arm for a few iterations with the spec's own models, data and batch, the teacher's forward included; or
given with `--step-seconds`), and how many of each the spec asks for:

- the teacher: `teacher.iters` iterations and its evaluations;
- the search: `num_samples` trials per arm (per selection repeat), each cut short by successive halving as its
  rungs and the spec's halving rule imply (reproducible mode: the synchronous rule, exactly; else ASHA, where a
  trial passes each rung with probability 1/η);
- confirmation: `confirm.top × confirm.seeds` full runs per arm;
- the retrain: `retrain_seeds` runs per arm, or under `search.decide` the most it may take (`max_seeds`).

Device-hours count the units a trial holds (GPUs, else CPUs, times `resources.workers`), as the table's compute
column does; the wall clock assumes K trials at once after the teacher. Measurement is the only part that imports
torch; the arithmetic is pure.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fakd.errors import UserError
from fakd.spec import StudySpec
from fakd.study.halving import rung_milestones

TEACHER = "teacher"
MEASURED_ITERS = 8
"""Iterations per measured window; two windows run and the second is kept (the first warms up)."""


@dataclass(frozen=True)
class StepCost:
    """Seconds of one training iteration and of one evaluation pass."""

    iteration: float
    evaluation: float = 0.0


@dataclass(frozen=True)
class ArmBill:
    """Device-hours of one arm, by part; and the run counts behind them."""

    seconds_per_iter: float
    search: float
    confirm: float
    retrain: float
    search_trials: int
    retrain_runs: int

    @property
    def total(self) -> float:
        return self.search + self.confirm + self.retrain


@dataclass(frozen=True)
class Bill:
    unit: str  # "gpu" or "cpu"
    teacher: float
    arms: dict[str, ArmBill]
    slots: int
    retrain_note: str

    @property
    def total(self) -> float:
        return self.teacher + sum(arm.total for arm in self.arms.values())

    def wall_clock(self, units_per_trial: float) -> float:
        """Hours on `slots` trials at once: the teacher alone, then everything else spread over the slots."""
        return (self.teacher + sum(arm.total for arm in self.arms.values()) / self.slots) / units_per_trial

    def to_json(self, units_per_trial: float) -> dict[str, Any]:
        return {"unit": f"{self.unit}_hours", "teacher": self.teacher,
                "arms": {name: {**asdict(arm), "total": arm.total} for name, arm in self.arms.items()},
                "total": self.total, "slots": self.slots, "wall_clock_hours": self.wall_clock(units_per_trial),
                "retrain": self.retrain_note}


def parse_step_seconds(text: str, arms: list[str]) -> dict[str, StepCost]:
    """`--step-seconds kd=0.21,baseline=0.15,teacher=0.4`: seconds per iteration by arm (and teacher)."""
    given: dict[str, StepCost] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in (*arms, TEACHER):
            raise UserError(f"--step-seconds names {name!r}, which is not an arm of the study; accepted: "
                            f"{', '.join((*arms, TEACHER))}", key="--step-seconds")
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not seconds > 0 or not math.isfinite(seconds):
            raise UserError(f"--step-seconds {part!r}: seconds per iteration must be a positive number",
                            key="--step-seconds")
        given[name] = StepCost(seconds)
    return given


def evaluations_per_trial(spec: StudySpec, evaluations: int) -> float:
    """The mean number of evaluations a search trial of the spec reaches under its halving."""
    search = spec.settings.search
    if search.scheduler == "none":
        return float(evaluations)
    milestones = rung_milestones(evaluations, search.grace_period, search.reduction_factor)
    if not milestones:
        return float(evaluations)
    if search.reproducible:  # synchronous halving in brackets of one generation: exact counts
        size = min(search.generation_size or 4, search.num_samples)
        total, done = 0.0, 0
        for start in range(0, search.num_samples, size):
            alive = min(size, search.num_samples - start)
            done = 0
            for milestone in [*milestones, evaluations]:
                total += alive * (milestone - done)
                done = milestone
                alive = max(1, alive // search.reduction_factor)
        return total / search.num_samples
    expected, done, survival = 0.0, 0, 1.0
    for milestone in [*milestones, evaluations]:
        expected += survival * (milestone - done)
        done = milestone
        survival /= search.reduction_factor
    return expected


def planned_retrain_seeds(spec: StudySpec) -> tuple[int, str]:
    """Seeds per arm the retrain of a sweep takes (the most, under `search.decide`), and a line saying which."""
    search = spec.settings.search
    if search.decide is not None:
        return search.decide.max_seeds, (f"retrain: at most {search.decide.max_seeds} seeds per arm "
                                         f"(search.decide stops earlier once every comparison is decided)")
    if search.retrain_seeds:
        return search.retrain_seeds, f"retrain: {search.retrain_seeds} seeds per arm"
    return 0, "retrain: none planned (search.retrain_seeds is 0; `retrain --seeds N` adds N runs per arm)"


@dataclass(frozen=True)
class Work:
    """Training iterations and evaluation passes (expected counts under halving)."""

    iterations: float
    evaluations: float

    def seconds(self, cost: StepCost) -> float:
        return self.iterations * cost.iteration + self.evaluations * cost.evaluation


PARTS = ("search", "confirm", "retrain")


@dataclass(frozen=True)
class PlannedWork:
    """What a spec asks each arm (by part) and its teacher to compute, independent of any machine."""

    teacher: Work
    arms: dict[str, dict[str, Work]]
    search_trials: int
    retrain_runs: int
    retrain_note: str


def planned_work(spec: StudySpec, retrain_runs: int | None = None) -> PlannedWork:
    """The iterations and evaluations of `spec` per arm and part; `retrain_runs` replaces the spec's retrain seeds
    (as `retrain --seeds N` does)."""
    settings = spec.settings
    train = spec.defaults.train
    evaluations = math.ceil(train.iters / train.eval_every)
    searched_evals = evaluations_per_trial(spec, evaluations)
    seeds, note = planned_retrain_seeds(spec)
    if retrain_runs is not None:
        seeds, note = retrain_runs, f"retrain: {retrain_runs} seeds per arm"
    repeats = settings.search.selection_repeats
    confirm = settings.search.confirmation
    trials = settings.search.num_samples * repeats
    confirm_runs = confirm.top * confirm.seeds * repeats if confirm is not None else 0
    full = Work(train.iters, evaluations)

    def times(runs: float, work: Work) -> Work:
        return Work(runs * work.iterations, runs * work.evaluations)

    search = Work(searched_evals * train.eval_every, searched_evals)
    arms = {arm: {"search": times(trials, search), "confirm": times(confirm_runs, full),
                  "retrain": times(seeds * repeats, full)} for arm in settings.arms}
    teacher = spec.defaults.teacher
    teacher_work = Work(0, 0)
    if not (teacher.checkpoint or teacher.is_zoo):
        iters = teacher.iters or train.iters
        teacher_work = Work(iters, math.ceil(iters / train.eval_every))
    return PlannedWork(teacher_work, arms, trials, seeds * repeats, note)


def make_bill(spec: StudySpec, costs: Mapping[str, StepCost], slots: int) -> Bill:
    """The bill of `spec` from the cost of an iteration and of an evaluation of each arm (and the teacher)."""
    resources = spec.settings.resources
    hours = resources.units_per_trial / 3600
    work = planned_work(spec)
    arms = {arm: ArmBill(costs[arm].iteration, *(parts[part].seconds(costs[arm]) * hours for part in PARTS),
                         work.search_trials, work.retrain_runs) for arm, parts in work.arms.items()}
    teacher_cost = costs.get(TEACHER)
    teacher_hours = work.teacher.seconds(teacher_cost) * hours if teacher_cost is not None else 0.0
    return Bill(resources.device, teacher_hours, arms, slots, work.retrain_note)


def plan_metadata(spec: StudySpec, retrain_runs: int | None = None) -> dict[str, Any]:
    """The plan a study stores (study.json `plan`): each arm's planned iterations and evaluations by part, and the
    unit its hours are counted in; `status` and the report set them against what the study spent."""
    resources = spec.settings.resources
    work = planned_work(spec, retrain_runs)
    return {"unit": resources.device, "units_per_trial": resources.units_per_trial, "retrain": work.retrain_note,
            "teacher": asdict(work.teacher),
            "arms": {arm: {part: asdict(parts[part]) for part in PARTS} for arm, parts in work.arms.items()}}


@contextlib.contextmanager
def _cpu_threads(count: int) -> Iterator[None]:
    """Run with `count` intra-op threads, as a Ray task holding `count` CPUs does (Ray sets OMP_NUM_THREADS)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_costs(spec: StudySpec, arms: list[str]) -> dict[str, StepCost]:
    """Train the teacher and each arm in `arms` for two windows of `MEASURED_ITERS` iterations here (random
    weights: the cost of a step does not depend on them) and keep the second window's seconds per iteration and
    per evaluation. On CPU each runs on the threads its study task would hold: a trial `resources.cpu`, the
    teacher every core (it trains alone)."""
    from fakd.train.data import build_splits
    from fakd.train.loop import fit
    from fakd.train.teacher import build_model, model_config

    def window(cfg: Any, teacher: Any = None) -> StepCost:
        run = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"iters": 2 * MEASURED_ITERS, "eval_every": MEASURED_ITERS})})
        splits = build_splits(run)
        model = build_model(run.student, splits.num_classes, run.train.seed)
        windows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="fakd-plan-") as work:
            fit(run, model, splits, Path(work), teacher=teacher, report=lambda metrics, _: windows.append(metrics),
                progress=False)
        last = windows[-1]
        iteration = float(last["seconds_per_iter"])
        return StepCost(iteration, max(0.0, float(last["window_seconds"]) - iteration * MEASURED_ITERS))

    costs: dict[str, StepCost] = {}
    first = spec.run_config(spec.settings.arms[0], split="holdout")
    teacher_cfg = spec.defaults.teacher
    trial_cpus = spec.settings.resources.cpu
    if TEACHER in arms and not (teacher_cfg.checkpoint or teacher_cfg.is_zoo):
        with _cpu_threads(os.cpu_count() or trial_cpus):
            costs[TEACHER] = window(first.teacher_run())
    teacher_model = None
    for arm in arms:
        if arm == TEACHER:
            continue
        cfg = spec.run_config(arm, split="holdout")
        if cfg.distills and teacher_model is None:
            if teacher_cfg.is_zoo or teacher_cfg.checkpoint:
                raise UserError(f"plan measures steps with a teacher built from its configuration, and this one is "
                                f"a file ({teacher_cfg.checkpoint}); give its arms' seconds per iteration with "
                                "--step-seconds", key="teacher.checkpoint")
            splits_classes = build_splits(cfg).num_classes
            teacher_model = build_model(model_config(cfg.teacher), splits_classes, seed=1).eval()
        with _cpu_threads(trial_cpus):
            costs[arm] = window(cfg, teacher_model if cfg.distills else None)
    return costs


def render_bill(bill: Bill, units_per_trial: float, given: Mapping[str, StepCost]) -> str:
    """The bill as a Markdown table with a line on the retrain and the wall clock."""
    unit = f"{bill.unit.upper()}-hours"
    header = f"| arm | s/iter | search ({unit}) | confirm | retrain | total |"
    lines = [header, "|:--|--:|--:|--:|--:|--:|"]
    if bill.teacher:
        lines.append(f"| teacher | | | | | {bill.teacher:.3g} |")
    for name, arm in bill.arms.items():
        source = " (given)" if name in given else ""
        lines.append(f"| {name} | {arm.seconds_per_iter:.3g}{source} | {arm.search:.3g} ({arm.search_trials} "
                     f"trials) | {arm.confirm:.3g} | {arm.retrain:.3g} ({arm.retrain_runs} runs) | {arm.total:.3g} |")
    lines.append(f"| **total** | | | | | **{bill.total:.3g}** |")
    return "\n".join([*lines, "", bill.retrain_note + ".",
                      f"wall clock on {bill.slots} slots: {bill.wall_clock(units_per_trial):.3g} hours "
                      f"(the teacher alone, then {bill.slots} trials at once; each trial holds {units_per_trial:g} "
                      f"{bill.unit.upper()}{'s' if units_per_trial != 1 else ''})."])
