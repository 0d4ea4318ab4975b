"""The study engine's decisions without Ray: search budgets, successive halving within each arm, Optuna
bookkeeping, reproducible mode under any timing, and rebuilding state from the records after a crash.

`Executor` drives a phase the way Ray Tune does (a bounded number of running trials, results arriving in
an order chosen by a seeded RNG, trials stopped when the phase says so), with scores from a crafted
learning-curve model instead of training.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import TINY_SPEC
from memcg import memory_cgroup

from fakd import faults
from fakd.errors import UserError
from fakd.faults import killed_for_memory
from fakd.results import COMPLETE, FAILED, PRUNED, RUNNING, StudyDir, TrialRecord, read_trials
from fakd.results.layout import FORMAT, write_json
from fakd.results.records import OUT_OF_MEMORY
from fakd.results.selection import select_best
from fakd.results.space import search_stages
from fakd.results.status import format_status
from fakd.spec import validate_spec
from fakd.study.halving import CONTINUE, PRUNE, WAIT, AsyncHalving, SyncHalving, rung_milestones
from fakd.study.handoff import TrialTask
from fakd.study.optuna_link import OptunaLink, open_storage
from fakd.study.phases import FINISHED, ConfirmPhase, RetrainPhase, SearchPhase, is_memory_error
from fakd.study.selection import plan_confirm, plan_retrain, retrain_seeds
from fakd.study.tune_glue import PhaseRecorder
from fakd.vocab import METRIC


def make_spec(**search):
    raw = copy.deepcopy(TINY_SPEC)
    raw["train"].update(iters=8, eval_every=1, lr={"loguniform": [0.001, 0.1]})
    raw["loss"]["kd"]["temperature"] = {"choice": [1.0, 2.0, 4.0]}
    raw["arms"] = ["baseline", "kd"]
    raw["search"] = {"num_samples": 6, "max_concurrent": 3, "seed": 0, **search}
    return validate_spec(raw, "phases.yaml")


def make_study(tmp_path: Path) -> StudyDir:
    study = StudyDir(tmp_path / "study")
    study.root.mkdir(parents=True)
    write_json(study.marker, {"format": FORMAT, "name": "tiny", "optuna_prefix": "tiny"})
    return study


def curve(record: TrialRecord, evaluation: int) -> float:
    """A learning curve set by the hyperparameters: the kd arm scores far above the baseline arm."""
    lr = record.values["train.lr"]
    quality = 1.0 - abs(math.log10(lr) + 2.0) / 2.0  # best at lr = 0.01
    level = 0.9 if record.arm == "kd" else 0.1
    return level * (0.5 + 0.5 * quality) * (1 - math.exp(-evaluation / 3))


class Executor:
    """Runs a phase like Tune: at most `slots` trials at once, results in a seeded random order."""

    def __init__(self, phase, slots: int, seed: int, score=curve, crash_after: int | None = None,
                 diverge: set[str] = frozenset()) -> None:
        self.phase, self.slots, self.rng, self.score = phase, slots, random.Random(seed), score
        self.crash_after, self.diverge = crash_after, diverge
        self.running: dict[str, int] = {}
        self.started: list[str] = []  # trial keys in the order the phase handed them out
        self.reports = 0

    def start(self) -> bool:
        record = self.phase.next_trial()
        if record is None or record == FINISHED:
            return False
        self.started.append(record.key)
        self.running[record.key] = record.iterations  # a restarted trial continues from its checkpoint
        if record.iterations:  # and reports that checkpoint again first
            assert self.phase.on_result(record.key, dict(record.last)) or True
        return True

    def run(self) -> None:
        while True:
            while len(self.running) < self.slots and self.start():
                pass
            if not self.running:
                assert self.phase.is_finished(), "nothing runs and the phase is not finished"
                return
            key = self.rng.choice(sorted(self.running))
            record = self.phase.records[key]
            iteration = self.running[key] + record.eval_every
            self.running[key] = iteration
            if key in self.diverge and iteration >= 3:
                self.phase.on_result(key, {"iteration": iteration, "diverged": True, "error": "nan"})
                del self.running[key]
                self.phase.on_end(key, None)
                continue
            row = {"iteration": iteration, "val_miou": self.score(record, iteration // record.eval_every),
                   "params": 1000}
            keep = self.phase.on_result(key, row)
            self.reports += 1
            if self.crash_after is not None and self.reports >= self.crash_after:
                raise KeyboardInterrupt("the driver died")
            if not keep or iteration >= record.total_iters:
                del self.running[key]
                self.phase.on_end(key, None)


def search(tmp_path: Path, spec, slots: int = 3, seed: int = 0, **kwargs) -> tuple[StudyDir, SearchPhase]:
    study = make_study(tmp_path)
    link = OptunaLink(spec, open_storage(spec, study), "tiny")
    phase = SearchPhase(study, spec, lambda line: None, link)
    executor = Executor(phase, slots, seed, **kwargs)
    executor.run()
    phase.started = executor.started
    return study, phase


def optuna_states(study: StudyDir) -> dict[str, dict[str, int]]:
    with sqlite3.connect(study.root / "optuna.db") as db:
        rows = db.execute("select s.study_name, t.state, count(*) from trials t join studies s using (study_id) "
                          "group by s.study_name, t.state").fetchall()
    found: dict[str, dict[str, int]] = {}
    for name, state, count in rows:
        found.setdefault(name, {})[state] = count
    return found


def test_rung_milestones():
    assert rung_milestones(8, 1, 2) == [1, 2, 4]
    assert rung_milestones(9, 1, 3) == [1, 3]
    assert rung_milestones(2, 2, 2) == []


def test_async_halving_keeps_arms_apart():
    halving = AsyncHalving([1], 2)
    assert halving.decide("high", "h1", 1, 0.9) == CONTINUE
    assert halving.decide("high", "h2", 1, 0.8) == PRUNE  # below the median of its own arm
    assert halving.decide("low", "l1", 1, 0.1) == CONTINUE  # never compared with the high arm
    assert halving.decide("low", "l2", 1, 0.2) == CONTINUE
    assert halving.decide("low", "l1", 1, 0.1) == CONTINUE  # a repeated report keeps its decision


def test_sync_halving_decides_a_rung_when_all_its_trials_reported():
    halving = SyncHalving([1, 2], 2)
    halving.add_bracket("b", ["t0", "t1", "t2", "t3"])
    assert halving.decide("arm", "t2", 1, 0.5) == WAIT
    assert halving.decide("arm", "t0", 1, 0.4) == WAIT
    halving.forget("arm", "t3")  # failed before the rung: not waited for
    assert halving.decide("arm", "t1", 1, 0.5) == CONTINUE  # ties go to the earlier trial: t1 over t2
    assert halving.waiting_promoted("t2") is False and halving.waiting_promoted("t0") is False
    assert halving.decide("arm", "t1", 2, 0.1) == CONTINUE  # alone in the next rung: kept


def test_every_arm_gets_exactly_its_budget_interleaved(tmp_path):
    spec = make_spec(scheduler="none")
    study, phase = search(tmp_path, spec, slots=4)
    records = read_trials(study)
    assert sorted((r.arm, r.state) for r in records) == [("baseline", COMPLETE)] * 6 + [("kd", COMPLETE)] * 6
    handed_out = [phase.records[key].arm for key in phase.started]
    assert len(handed_out) == 12
    for n in range(1, 13):  # at every point of the hand-out the arms' counts differ by at most one
        assert abs(handed_out[:n].count("baseline") - handed_out[:n].count("kd")) <= 1, handed_out
    assert optuna_states(study) == {"tiny/baseline": {"COMPLETE": 6}, "tiny/kd": {"COMPLETE": 6}}
    assert set(records[0].values) == {"train.lr"} and set(records[-1].values) == {"train.lr", "loss.kd.temperature"}


def test_asha_prunes_within_each_arm_and_tells_optuna(tmp_path):
    spec = make_spec(scheduler="asha", grace_period=1, reduction_factor=2)
    study, phase = search(tmp_path, spec, slots=3, seed=1)
    records = read_trials(study)
    for arm in ("baseline", "kd"):
        mine = [r for r in records if r.arm == arm]
        states = {r.state for r in mine}
        # the baseline scores far below every kd trial, yet its best trials still run to the end
        assert COMPLETE in states and PRUNED in states, (arm, [(r.key, r.state) for r in mine])
        for r in mine:
            if r.state == PRUNED:
                assert r.iterations in (1, 2, 4) and r.reason.startswith("stopped by successive halving")
    study_states = optuna_states(study)
    for arm in ("baseline", "kd"):
        mine = [r for r in records if r.arm == arm]
        assert study_states[f"tiny/{arm}"] == {s: sum(r.state == s for r in mine) for s in {r.state for r in mine}}
    storage = optuna.storages.RDBStorage(f"sqlite:///{study.root / 'optuna.db'}")
    kd = optuna.load_study(study_name="tiny/kd", storage=storage)
    for trial in kd.trials:  # every evaluation is an intermediate value: learning curves in the dashboard
        record = next(r for r in records if r.optuna_number == trial.number and r.arm == "kd")
        assert sorted(trial.intermediate_values) == list(range(1, record.iterations + 1))


def test_diverged_and_errored_trials_fail_in_optuna_and_count_in_the_budget(tmp_path):
    spec = make_spec(scheduler="none", num_samples=3)
    study, phase = search(tmp_path, spec, slots=2, diverge={"search/kd-001"})
    records = {r.key: r for r in read_trials(study)}
    assert records["search/kd-001"].state == FAILED and records["search/kd-001"].reason == "diverged"
    assert records["search/kd-001"].iterations == 3
    assert optuna_states(study)["tiny/kd"] == {"COMPLETE": 2, "FAIL": 1}
    assert len(records) == 6 and phase.is_finished()


def run_status(study: StudyDir) -> list[dict]:
    return json.loads(json.dumps([r.status_json() for r in read_trials(study)]))


@pytest.mark.parametrize(("scheduler", "sampler"), [("asha", "tpe"), ("none", "tpe"), ("asha", "gp"),
                                                   ("asha", "qmc")])
def test_reproducible_mode_decides_the_same_under_any_timing(tmp_path, scheduler, sampler):
    spec = make_spec(scheduler=scheduler, reproducible=True, generation_size=3, sampler=sampler)
    outcomes = []
    for run, (slots, seed) in enumerate([(1, 0), (3, 1), (5, 7)]):
        study, _ = search(tmp_path / str(run), spec, slots=slots, seed=seed)
        outcomes.append(run_status(study))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    states = {item["status"] for item in outcomes[0]}
    assert states == ({COMPLETE, PRUNED} if scheduler == "asha" else {COMPLETE})


def test_qmc_spreads_each_arms_trials_over_the_space(tmp_path):
    """After the first trial (which Optuna's QMC draws at random, to learn the space), an arm's learning rates are
    the first points of one scrambled Sobol sequence: one in each quarter of the log range among the next four
    (random draws land so by chance only), in reproducible mode too."""
    for reproducible in (False, True):
        spec = make_spec(scheduler="none", sampler="qmc", num_samples=5, reproducible=reproducible)
        study, _ = search(tmp_path / str(reproducible), spec)
        for arm in ("baseline", "kd"):
            trials = sorted((r for r in read_trials(study) if r.arm == arm), key=lambda r: r.index)
            rates = [r.values["train.lr"] for r in trials[1:]]
            quarters = sorted(int((math.log10(lr) + 3) / 0.5) for lr in rates)
            assert quarters == [0, 1, 2, 3], (arm, rates)


def test_async_mode_depends_on_timing_reproducible_mode_does_not(tmp_path):
    """The motivating case: the same spec, two timings. Async ASHA with TPE may decide differently."""
    spec = make_spec(scheduler="asha", num_samples=6)
    stopped = lambda items: [(i["trial"], i["iterations"]) for i in items]  # noqa: E731
    outcomes = {json.dumps(stopped(run_status(search(tmp_path / str(seed), spec, slots=3, seed=seed)[0])))
                for seed in range(4)}
    assert len(outcomes) > 1, "four timings of asynchronous ASHA all stopped the same trials at the same rungs"


def test_a_crashed_driver_resumes_to_the_same_study(tmp_path):
    spec = make_spec(scheduler="asha", reproducible=True, generation_size=3)
    reference, _ = search(tmp_path / "straight", spec, slots=3, seed=0)
    study = make_study(tmp_path / "crashed")
    for crash_after in (6, 9, 12):  # the driver dies three times, at other points
        link = OptunaLink(spec, open_storage(spec, study), "tiny")
        phase = SearchPhase(study, spec, lambda line: None, link)
        with pytest.raises(KeyboardInterrupt):
            Executor(phase, 3, crash_after, crash_after=crash_after).run()
    link = OptunaLink(spec, open_storage(spec, study), "tiny")
    phase = SearchPhase(study, spec, lambda line: None, link)
    Executor(phase, 2, 99).run()
    assert run_status(study) == run_status(reference)
    assert optuna_states(study) == optuna_states(reference)


def test_retrain_plan_selects_the_best_finished_trial_and_adds_seeds(tmp_path):
    spec = make_spec(scheduler="asha")
    study, _ = search(tmp_path, spec, slots=2)
    records = read_trials(study)
    plan, problems = plan_retrain(spec, records, retrain_seeds(spec, 2))
    assert problems == {} and len(plan) == 4
    for arm in ("baseline", "kd"):
        best = max((r for r in records if r.arm == arm and r.state == COMPLETE), key=lambda r: r.final_miou)
        assert {p.source for p in plan if p.arm == arm} == {best.key}
        assert sorted(p.seed for p in plan if p.arm == arm) == [1, 2]
        assert all(p.run["split"] == "val" and p.run["train"]["seed"] == p.seed for p in plan)
    phase = RetrainPhase(study, spec, lambda line: None, plan)
    assert read_trials(study, "retrain") == [] and phase.budget() == 4  # written when handed out, not up front
    executor = Executor(phase, 1, 0)
    executor.start()
    assert [r.key for r in read_trials(study, "retrain")] == executor.started
    executor.run()
    assert len(read_trials(study, "retrain")) == 4
    more, _ = plan_retrain(spec, read_trials(study), retrain_seeds(spec, 3))
    bigger = RetrainPhase(study, spec, lambda line: None, more)
    assert {r.state for r in bigger.records.values()} == {COMPLETE} and len(bigger.records) == 4
    assert [r.key for r in bigger.unwritten] == ["retrain/" + p.key.split("/")[-1] for p in more if p.seed == 3]


def noisy_curve(record: TrialRecord, evaluation: int) -> float:
    """`curve` plus seed noise as large as the differences between configurations (fixed per trial key)."""
    return curve(record, evaluation) + random.Random(record.key).gauss(0.0, 0.05)


def test_confirmation_selects_the_best_mean_of_fresh_seeds(tmp_path):
    spec = make_spec(scheduler="none", num_samples=5, confirm={"top": 3, "seeds": 2})
    study, _ = search(tmp_path, spec, score=noisy_curve)
    plan = plan_confirm(spec, read_trials(study))
    assert len(plan) == 2 * 3 * 2  # arms × top × seeds, counted alike for every arm
    lines: list[str] = []
    phase = ConfirmPhase(study, spec, lines.append, plan)
    Executor(phase, 2, 0, score=noisy_curve).run()
    records = read_trials(study)
    confirm = [r for r in records if r.phase == "confirm"]
    assert len(confirm) == 12 and {r.state for r in confirm} == {COMPLETE}
    assert sum("COMPLETE: held-out mIoU" in line for line in lines) == 12  # the split each run is scored on
    assert all(r.config.split == "holdout" and r.config.train.iters == 8 for r in confirm)  # held-out, same length
    assert {r.seed for r in confirm} == {10_000, 10_001}  # neither the search's seed nor a retrain seed
    selected = select_best(records)
    for arm in ("baseline", "kd"):
        finished = sorted((r for r in records if r.phase == "search" and r.arm == arm and r.final_miou is not None),
                          key=lambda r: -r.final_miou)
        tops = finished[:3]
        assert {r.source for r in confirm if r.arm == arm} == {r.key for r in tops}
        means = {t.key: statistics.fmean(c.final_miou for c in confirm if c.source == t.key) for t in tops}
        assert selected[(arm, 0, "test_efficientnet")].key == max(means, key=means.get)
    plan, _ = plan_retrain(spec, records, retrain_seeds(spec, 1))
    assert {p.source for p in plan} == {r.key for r in selected.values()}


def test_an_inheriting_add_on_searches_its_own_keys_on_its_base_arms_selection(tmp_path):
    raw = copy.deepcopy(TINY_SPEC)
    raw["train"].update(iters=8, eval_every=1, lr={"loguniform": [0.001, 0.1]})
    raw["loss"]["kd"]["temperature"] = {"choice": [1.0, 2.0, 4.0]}
    raw["loss"]["fakd"]["max_strength"] = {"uniform": [0.5, 2.0]}
    raw["search"] = {"num_samples": 4, "max_concurrent": 2, "seed": 0, "add_on": "inherit", "scheduler": "none",
                     "confirm": {"top": 2, "seeds": 1}}
    spec = validate_spec(raw, "phases.yaml")
    assert search_stages(spec) == [["baseline", "kd"], ["kd+fakd"]]
    study = make_study(tmp_path)
    link = OptunaLink(spec, open_storage(spec, study), "tiny")
    for arms in search_stages(spec):
        Executor(SearchPhase(study, spec, lambda line: None, link, read_trials(study, "search"), arms), 2, 0,
                 score=noisy_curve).run()
        plan = [r for r in plan_confirm(spec, read_trials(study)) if r.arm in arms]
        assert len(plan) == 2 * len(arms)
        Executor(ConfirmPhase(study, spec, lambda line: None, plan), 2, 0, score=noisy_curve).run()
    records = read_trials(study)
    kd = select_best(records)[("kd", 0, "test_efficientnet")]
    added = [r for r in records if r.phase == "search" and r.arm == "kd+fakd"]
    assert len(added) == 4
    for record in added:
        assert record.values["train.lr"] == kd.values["train.lr"]
        assert record.values["loss.kd.temperature"] == kd.values["loss.kd.temperature"]
    assert len({r.values["loss.fakd.max_strength"] for r in added}) == 4
    asked = optuna.load_study(study_name="tiny/kd+fakd", storage=link.storage).trials
    assert all(set(trial.params) == {"loss.fakd.max_strength"} for trial in asked)
    with pytest.raises(UserError, match="no search trial of kd finished"):
        SearchPhase(make_study(tmp_path / "empty"), spec, lambda line: None, link, [], ["kd+fakd"])


def test_selection_repeats_search_each_arm_again_with_its_own_optuna_study(tmp_path):
    spec = make_spec(scheduler="asha", num_samples=3, selection_repeats=2)
    study, phase = search(tmp_path, spec, slots=3)
    records = read_trials(study)
    assert phase.budget() == 12 and len(records) == 12
    for arm in ("baseline", "kd"):
        for repeat in (0, 1):
            assert sum(r.arm == arm and r.repeat == repeat for r in records) == 3
    states = optuna_states(study)
    assert set(states) == {"tiny/baseline", "tiny/kd", "tiny/baseline/repeat-1", "tiny/kd/repeat-1"}
    assert all(sum(counts.values()) == 3 for counts in states.values())
    first = sorted(r.values["train.lr"] for r in records if r.arm == "kd" and r.repeat == 0)
    second = sorted(r.values["train.lr"] for r in records if r.arm == "kd" and r.repeat == 1)
    assert first != second, "a repeat is an independent search, with other suggestions"
    plan, _ = plan_retrain(spec, records, retrain_seeds(spec, 2))
    assert sorted((p.arm, p.repeat) for p in plan) == sorted(
        [(arm, repeat) for arm in ("baseline", "kd") for repeat in (0, 1)] * 2)
    for p in plan:
        source = next(r for r in records if r.key == p.source)
        assert source.repeat == p.repeat and source.arm == p.arm


def test_an_errored_trial_fails_in_optuna_with_its_error(tmp_path):
    spec = make_spec(scheduler="none", num_samples=2)
    study = make_study(tmp_path)
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    record = phase.next_trial()
    phase.on_start(record.key)
    assert read_trials(study)[0].state == "RUNNING", "a started trial is RUNNING before its first report"
    phase.on_end(record.key, "Traceback (most recent call last):\nRuntimeError: CUDA error")
    stored = next(r for r in read_trials(study) if r.key == record.key)
    assert stored.state == FAILED and stored.reason == "error" and "CUDA error" in stored.error
    trial = optuna.load_study(study_name=f"tiny/{record.arm}", storage=f"sqlite:///{study.root / 'optuna.db'}"
                              ).trials[record.optuna_number]
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["fakd_reason"] == "error"


def test_a_resumed_async_search_never_repeats_a_suggestion(tmp_path):
    spec = make_spec(scheduler="none", num_samples=8)
    study = make_study(tmp_path)
    for crash_after in (3, 5):  # two driver runs end early; TPE is still in its random start-up phase
        phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
        with pytest.raises(KeyboardInterrupt):
            Executor(phase, 2, crash_after, crash_after=crash_after).run()
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    Executor(phase, 2, 0).run()
    for arm in ("baseline", "kd"):
        values = [tuple(sorted(r.values.items())) for r in read_trials(study) if r.arm == arm]
        assert len(values) == 8 and len(set(values)) == 8, values


def test_a_resumed_async_search_replays_the_rungs_in_arrival_order(tmp_path):
    spec = make_spec(scheduler="asha", grace_period=1, reduction_factor=2, num_samples=8)
    for timing in range(6):  # trials report in other orders, and the driver dies at other points
        study = make_study(tmp_path / str(timing))
        phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
        with pytest.raises(KeyboardInterrupt):
            Executor(phase, 4, timing, crash_after=10 + 2 * timing).run()
        stopped = {key for key, r in phase.records.items() if r.state == PRUNED} | phase.prune_requested
        rebuilt = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
        now_stopped = {key for key, r in rebuilt.records.items() if r.state == PRUNED} | rebuilt.prune_requested
        assert now_stopped == stopped, f"timing {timing}: a rung decision changed when the driver was rebuilt"


def test_a_driver_stopped_while_it_created_a_generation_resumes_to_the_same_study(tmp_path, monkeypatch):
    spec = make_spec(scheduler="asha", reproducible=True, generation_size=3)
    reference, _ = search(tmp_path / "straight", spec, slots=3, seed=0)
    study = make_study(tmp_path / "crashed")
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    real_ask, asks = OptunaLink.ask, []

    def dies_at_the_eighth_ask(self, *args, **kwargs):
        asks.append(args)
        if len(asks) == 8:  # the second trial of a generation: asked in Optuna, never recorded
            real_ask(self, *args, **kwargs)
            raise KeyboardInterrupt("the driver died")
        return real_ask(self, *args, **kwargs)

    monkeypatch.setattr(OptunaLink, "ask", dies_at_the_eighth_ask)
    with pytest.raises(KeyboardInterrupt):
        Executor(phase, 3, 5).run()
    monkeypatch.setattr(OptunaLink, "ask", real_ask)
    assert len(read_trials(study)) == 7, "the stopped driver left a generation with one of its three trials"
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    Executor(phase, 2, 99).run()
    assert run_status(study) == run_status(reference)
    assert {name: counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) for name, counts in optuna_states(study).items()
            } == {name: counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
                  for name, counts in optuna_states(reference).items()}


def test_equal_time_budgets_each_student_by_its_own_baseline(tmp_path):
    """Two students searched: each arm's iterations come from the baseline's time with the same student."""
    from fakd.study.selection import budget_iters

    spec = make_spec(scheduler="none")
    step = {("baseline", "small"): 0.1, ("kd", "small"): 0.2, ("baseline", "large"): 0.4, ("kd", "large"): 0.5}
    records = []
    for index, ((arm, student), seconds) in enumerate(step.items()):
        record = TrialRecord(key=f"search/t{index}", phase="search", arm=arm, index=index, values={}, run={},
                             student=student, seed=0)
        record.results = [{"iteration": 4, "seconds_per_iter": seconds}, {"iteration": 8, "seconds_per_iter": seconds}]
        records.append(record)
    iters = spec.defaults.train.iters
    assert budget_iters(spec, records, "equal-time") == {
        ("baseline", "large"): iters, ("baseline", "small"): iters,
        ("kd", "large"): round(iters * 0.4 / 0.5), ("kd", "small"): round(iters * 0.1 / 0.2)}
    assert set(budget_iters(spec, records, "equal-iters").values()) == {iters}


def test_random_search_is_a_sampler_of_its_own(tmp_path):
    spec = make_spec(scheduler="asha", grace_period=1, sampler="random")
    link = OptunaLink(spec, open_storage(spec, make_study(tmp_path / "link")), "tiny")
    assert isinstance(link._sampler(0, "kd", 0), optuna.samplers.RandomSampler)
    tpe = OptunaLink(make_spec(num_samples=9, sampler="tpe"), link.storage, "tiny")._sampler(0, "kd", 0)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    # TPE models an arm after a third of its budget: with Optuna's default of 10 random start-up trials a budget of
    # 9 would be random search throughout
    assert tpe._n_startup_trials == 3
    for sampler in ("tpe", "gp"):  # gp: the default
        for changes, startup in (({"startup_trials": 0}, 0), ({"num_samples": 60}, 10)):
            made = OptunaLink(make_spec(sampler=sampler, **changes), link.storage, "tiny")._sampler(0, "kd", 0)
            assert made._n_startup_trials == startup, (sampler, changes)
    gp = OptunaLink(make_spec(num_samples=9, sampler="gp"), link.storage, "tiny")._sampler(0, "kd", 0)
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 3
    qmc = OptunaLink(make_spec(sampler="qmc"), link.storage, "tiny")._sampler(0, "kd", 0)
    assert isinstance(qmc, optuna.samplers.QMCSampler)
    study, _ = search(tmp_path, spec, slots=2)
    assert sorted(r.arm for r in read_trials(study)) == ["baseline"] * 6 + ["kd"] * 6


def test_an_evaluation_without_the_studys_metric_is_an_error_not_a_last_place(tmp_path):
    spec = make_spec(scheduler="asha")
    study = make_study(tmp_path)
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    record = phase.next_trial()
    with pytest.raises(RuntimeError, match=f"reported iteration 1 without {METRIC}"):
        phase.on_result(record.key, {"iteration": 1, "val_mIoU": 0.5, "params": 1000})
    assert phase.on_result(record.key, {"iteration": 1, "diverged": True, "error": "nan"}) is True


def test_a_trial_out_of_memory_fails_with_its_batch_and_crop_and_is_not_handed_out_again(tmp_path):
    """Memory is exhausted by injection here: the report that `run_trial` makes of a `MemoryError` (tested in
    test_study.py), and the error text Ray gives a trial its memory monitor ended."""
    spec = make_spec(scheduler="none", num_samples=3)
    study = make_study(tmp_path)
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    caught, killed = phase.next_trial(), phase.next_trial()
    assert phase.on_result(caught.key, {"out_of_memory": "MemoryError: cannot allocate"}) is False
    phase.on_end(caught.key, None)
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\nray.exceptions.OutOfMemoryError: Task was killed due "
                          "to the node running low on memory.")
    retried = SimpleNamespace(config=TrialTask(killed.key, killed.arm, killed.config).as_config(),
                              error_file=str(error_file))
    PhaseRecorder(phase).on_trial_recover(0, [], retried)  # Tune retries it: the retry stops at its first report
    assert phase.on_result(killed.key, {"iteration": 1, METRIC: 0.5, "params": 1000}) is False
    assert phase.records[killed.key].results == []
    handed_out = {phase.next_trial().key for _ in range(4)} - {None}
    assert not handed_out & {caught.key, killed.key}
    records = {r.key: r for r in read_trials(study)}
    expected = {caught.key: "MemoryError: cannot allocate", killed.key: "ray.exceptions.OutOfMemoryError: Task was"}
    for key, error in expected.items():
        assert (records[key].state, records[key].reason) == (FAILED, OUT_OF_MEMORY)
        assert records[key].error.startswith(f"batch 2, crop 32×32: {error}")
    assert optuna_states(study)["tiny/baseline"].get("FAIL", 0) + optuna_states(study)["tiny/kd"].get("FAIL", 0) == 2
    table = format_status(read_trials(study), None)
    assert sum(f"FAILED ({OUT_OF_MEMORY})" in line for line in table.splitlines()) == 2


@pytest.mark.parametrize(("error", "memory"), [
    ("MemoryError: cannot allocate", True),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.", True),
    ("RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
     "tried to allocate 33554432 bytes. Error code 12 (Cannot allocate memory)", True),  # a data-parallel worker's
    ("RuntimeError: mat1 and mat2 shapes cannot be multiplied", False),
    ("OSError: [Errno 28] No space left on device", False),
])
def test_memory_errors_are_told_from_other_errors_by_their_text(error, memory):
    assert is_memory_error(error) is memory


def intermediate_values(study: StudyDir) -> dict[tuple[str, int], dict[int, float]]:
    """(Optuna study, trial number) -> its intermediate values, read from optuna.db."""
    with sqlite3.connect(study.root / "optuna.db") as db:
        rows = db.execute("select s.study_name, t.number, v.step, v.intermediate_value "
                          "from trial_intermediate_values v join trials t using (trial_id) "
                          "join studies s using (study_id)").fetchall()
    found: dict[tuple[str, int], dict[int, float]] = {}
    for name, number, step, value in rows:
        found.setdefault((name, number), {})[step] = value
    return found


def test_resume_writes_back_the_evaluations_optuna_lost(tmp_path):
    """The study's records are the truth: evaluations deleted from optuna.db (a finished trial's and a stopped
    running one's, as a storage failing mid-write loses them) are back before the search continues."""
    spec = make_spec(scheduler="none", num_samples=4)
    study = make_study(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Executor(SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny")), 2,
                 0, crash_after=20).run()
    before = intermediate_values(study)
    records = read_trials(study)
    finished = next(r for r in records if r.state == COMPLETE)
    running = next(r for r in records if r.state == RUNNING and len(r.results) >= 2)
    with sqlite3.connect(study.root / "optuna.db") as db:
        for record in (finished, running):
            db.execute("delete from trial_intermediate_values where step <= 2 and trial_id = (select trial_id from "
                       "trials join studies using (study_id) where study_name = ? and number = ?)",
                       (f"tiny/{record.arm}", record.optuna_number))
    assert intermediate_values(study) != before
    SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    assert intermediate_values(study) == before


RAY_WORKER_DIED = ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
                   "The actor is dead because its worker process has died. Worker exit type: UNEXPECTED_SYSTEM_EXIT "
                   "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file.")


def test_a_trial_whose_process_the_kernel_killed_for_memory_fails_out_of_memory(tmp_path, monkeypatch):
    """Ray cannot say who sent a SIGKILL; the host's OOM kill count can (a real kill raises it: test_trainable.py).
    Here /proc/vmstat is a file the test writes: a worker that died while the count rose failed for memory, one that
    died while it stayed the same failed with an error."""
    vmstat = tmp_path / "vmstat"
    monkeypatch.setattr(faults, "VMSTAT", vmstat)
    vmstat.write_text("pgfault 10\noom_kill 3\n")
    spec = make_spec(scheduler="none", num_samples=2)
    study = make_study(tmp_path / "study")
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "tiny"))
    killed, crashed = phase.next_trial(), phase.next_trial()
    phase.on_start(killed.key)
    vmstat.write_text("pgfault 10\noom_kill 4\n")  # the kernel killed a process while `killed` ran
    phase.on_start(crashed.key)
    error_file = tmp_path / "error.txt"
    error_file.write_text(RAY_WORKER_DIED)
    PhaseRecorder(phase).on_trial_recover(0, [], SimpleNamespace(
        config=TrialTask(killed.key, killed.arm, killed.config).as_config(), error_file=str(error_file)))
    phase.on_end(crashed.key, RAY_WORKER_DIED)
    records = {r.key: r for r in read_trials(study)}
    assert (records[killed.key].state, records[killed.key].reason) == (FAILED, OUT_OF_MEMORY)
    assert records[killed.key].error.startswith("batch 2, crop 32×32: the kernel's OOM killer ended the trial's")
    assert (records[crashed.key].state, records[crashed.key].reason) == (FAILED, "error")
    assert not killed_for_memory("ValueError: a bug", 3)  # the count rose, but the process raised: not a kill
    monkeypatch.setattr(faults, "VMSTAT", tmp_path / "absent")
    assert faults.kernel_oom_kills() is None and not killed_for_memory(RAY_WORKER_DIED, None)


def test_the_kernels_oom_kill_count_rises_when_it_kills_a_process_under_a_memory_limit():
    """The evidence `killed_for_memory` reads, from a real kill: a process that touches 512 MiB in a memory cgroup
    limited to 128 MiB (without swap) is ended by the kernel's OOM killer with SIGKILL."""
    limit = 128 << 20
    with memory_cgroup(limit) as procs:
        if procs is None:
            pytest.skip("no memory cgroup can be made here (it needs root, a writable memory controller, and swap "
                        "kept out of the cgroup or none at all)")
        before = faults.kernel_oom_kills()
        if before is None:
            pytest.skip("this kernel keeps no oom_kill count in /proc/vmstat (Linux before 4.13)")
        hog = subprocess.run([sys.executable, "-c", "data = b'x' * (512 << 20)"], timeout=60,
                             preexec_fn=lambda: procs.write_text(str(os.getpid())))
    assert hog.returncode == -signal.SIGKILL
    assert faults.kernel_oom_kills() > before
