"""`fakd.study.tune_glue`: Tune's calls passed to the phase as they are (no Ray runtime needed): suggestions,
results, trial starts and ends, the stop of the whole experiment, and Tune's log lines kept out of the terminal."""

import logging
import os
import pickle
from dataclasses import dataclass, field

import pytest
from conftest import TINY_SPEC
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from fakd.spec import validate_spec
from fakd.study import tune_glue
from fakd.study.handoff import TrialTask, trial_task
from fakd.study.phases import FINISHED
from fakd.study.signals import StopSignals

RUN = validate_spec(TINY_SPEC, "tiny.yaml").run_config("kd")


@dataclass
class FakePhase:
    """What the adapters call on a phase, recorded."""

    upcoming: list = field(default_factory=list)
    keep_going: bool = True
    calls: list = field(default_factory=list)
    stopping: bool = False
    halt: str | None = None
    fault: str | None = None

    def next_trial(self):
        return self.upcoming.pop(0)

    def on_result(self, key, result):
        self.calls.append(("result", key, result["iteration"]))
        return self.keep_going

    def on_start(self, key):
        self.calls.append(("start", key))

    def on_end(self, key, error):
        self.calls.append(("end", key, error))

    def is_memory_failure(self, key, error):
        return "out of memory" in error


@dataclass
class FakeTrial:
    config: dict
    error_file: str | None = None


@dataclass
class Record:
    key: str
    arm: str
    config: object


def trial(key: str = "search/kd-000", error_file: str | None = None) -> FakeTrial:
    return FakeTrial(TrialTask(key, "kd", RUN).as_config(), error_file)


def test_the_searcher_hands_out_the_phases_trials_and_says_when_it_is_done(tmp_path):
    phase = FakePhase(upcoming=[Record("search/kd-000", "kd", RUN), None, FINISHED])
    searcher = tune_glue.PhaseSearcher(phase)
    task = trial_task(searcher.suggest("t1"))
    assert (task.key, task.arm, task.run) == ("search/kd-000", "kd", RUN)
    assert searcher.suggest("t2") is None  # nothing to start now: Tune asks again later
    assert searcher.suggest("t3") == Searcher.FINISHED
    searcher.save(str(tmp_path / "searcher"))
    with pytest.raises(NotImplementedError, match="resumes from its trial records"):
        searcher.restore(str(tmp_path / "searcher"))


def test_results_starts_and_ends_reach_the_phase_which_decides():
    phase = FakePhase()
    scheduler, recorder = tune_glue.PhaseScheduler(phase), tune_glue.PhaseRecorder(phase)
    recorder.on_trial_start(0, [], trial())
    assert scheduler.on_trial_result(None, trial(), {"iteration": 2}) == TrialScheduler.CONTINUE
    phase.keep_going = False
    assert scheduler.on_trial_result(None, trial(), {"iteration": 4}) == TrialScheduler.STOP
    recorder.on_trial_complete(0, [], trial())
    assert phase.calls == [("start", "search/kd-000"), ("result", "search/kd-000", 2),
                           ("result", "search/kd-000", 4), ("end", "search/kd-000", None)]


def test_an_error_reaches_the_phase_with_the_end_of_its_traceback(tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("\n".join(f"line {i}" for i in range(20)) + "\nRuntimeError: out of memory\n")
    phase = FakePhase()
    recorder = tune_glue.PhaseRecorder(phase)
    recorder.on_trial_error(0, [], trial(error_file=str(error_file)))
    (_, key, text) = phase.calls[0]
    assert text.splitlines() == [f"line {i}" for i in range(9, 20)] + ["RuntimeError: out of memory"]
    recorder.on_trial_recover(0, [], trial(error_file=str(error_file)))  # memory: it ends now, no retry
    recorder.on_trial_recover(0, [], trial("search/kd-001"))  # no error file, not memory: Tune retries it
    assert len(phase.calls) == 2 and phase.calls[1][2] == text
    assert tune_glue._error_text(trial()) == "the trial failed without an error file"


def test_the_stopper_ends_the_experiment_on_a_signal_or_a_halt_and_pickles_to_nothing():
    phase, signals = FakePhase(), StopSignals(log=lambda line: None)
    stopper = tune_glue.SignalStopper(signals, phase)
    assert not stopper.stop_all() and not stopper("t1", {})
    phase.halt = "a damaged data file"
    assert stopper.stop_all() and not phase.stopping
    phase.halt, signals.requested = None, 15
    assert stopper.stop_all() and phase.stopping  # nothing new starts
    assert pickle.loads(pickle.dumps(stopper)).__dict__ == {}  # Tune's experiment state holds no phase


def test_tunes_log_lines_go_to_the_phases_log_file_and_come_back_after(tmp_path):
    log = tmp_path / "tune" / "search-1" / "tune.log"
    logger = logging.getLogger("ray.tune")
    before = logger.propagate
    with tune_glue._tune_logs_in(log):
        assert logger.propagate is False
        logger.warning("trial search/kd-000 restored")
    assert logger.propagate is before and "trial search/kd-000 restored" in log.read_text()


def test_tunes_console_is_off_while_a_phase_runs_and_a_users_own_setting_stays(monkeypatch):
    switch = tune_glue.TUNE_CONSOLE_SWITCH
    monkeypatch.delenv(switch, raising=False)
    with tune_glue._without_tune_console():
        assert os.environ[switch] == "0"
    assert switch not in os.environ  # nothing left in the process's environment
    monkeypatch.setenv(switch, "1")
    with tune_glue._without_tune_console():
        assert os.environ[switch] == "1"
    assert os.environ[switch] == "1"
