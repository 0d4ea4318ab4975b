"""Ray Tune as the executor of a phase: one Tune experiment per phase and driver run, holding every arm.

The phase decides (which trial next, continue or stop, how a trial ended); these adapters only pass Tune's
calls to it. Tune's experiment directory (`STUDY/tune/<phase>-<n>`) is a log: nothing is read back from
it, so a study that was moved or copied never writes through a path recorded there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from fakd.study.data_parallel import DRIVER_RESOURCES, DataParallelTrial, Scaling
from fakd.study.handoff import TrialContext, TrialTask, trial_task
from fakd.study.phases import FINISHED, Phase
from fakd.study.signals import StopSignals
from fakd.study.trainable import run_trial

TUNE_LOGGERS = ("ray.tune", "ray.train", "ray.air")
TUNE_CONSOLE_SWITCH = "RAY_AIR_NEW_OUTPUT"  # "0": the legacy reporter, silent at verbose=0


def _key(trial: Trial) -> str:
    return trial_task(trial.config).key


class PhaseSearcher(Searcher):
    """Hands out the phase's trials: new suggestions, promoted ones, unfinished ones to continue."""

    def __init__(self, phase: Phase) -> None:
        super().__init__()
        self.phase = phase

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        record = self.phase.next_trial()
        if record is None:
            return None
        if record == FINISHED:
            return Searcher.FINISHED
        return TrialTask(record.key, record.arm, record.config).as_config()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        return None  # the phase learns how a trial ended from `PhaseRecorder`, which also sees the error

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text("the study's trial records hold the search state\n")

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a study resumes from its trial records, not from Tune's state")


class PhaseScheduler(FIFOScheduler):
    """Passes every result to the phase, which records it and decides whether the trial continues."""

    def __init__(self, phase: Phase) -> None:
        super().__init__()
        self.phase = phase

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        keep_going = self.phase.on_result(_key(trial), result)
        return TrialScheduler.CONTINUE if keep_going else TrialScheduler.STOP


class PhaseRecorder(tune.Callback):
    """Tells the phase when a trial's process started, when it ended, and with which error."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.phase.on_start(_key(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.phase.on_end(_key(trial), None)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.phase.on_end(_key(trial), _error_text(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        """A trial whose process was ended for memory fails now: Tune's retry stops at its first report."""
        error = _error_text(trial)
        if self.phase.is_memory_failure(_key(trial), error):
            self.phase.on_end(_key(trial), error)


class SignalStopper(Stopper):
    """Stops the whole experiment once the driver received SIGINT or SIGTERM, or a trial hit a mistake the user must
    fix (a damaged data file)."""

    def __init__(self, signals: StopSignals, phase: Phase) -> None:
        self.signals, self.phase = signals, phase

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.signals.requested is not None:
            self.phase.stopping = True
            return True
        return self.phase.halt is not None or self.phase.fault is not None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its stopper into the experiment state at every checkpoint; that state is never read
        back (a study resumes from its records), so the signals and the whole phase are left out."""
        return {}


def _error_text(trial: Trial, lines: int = 12) -> str:
    """The end of the trial's traceback."""
    path = trial.error_file
    if path and Path(path).is_file():
        text = Path(path).read_text().strip().splitlines()
        return "\n".join(text[-lines:])
    return "the trial failed without an error file"


class _QuietFileHandler(logging.FileHandler):
    """A log file that drops what it cannot write (a full disk must not print Tune's lines after all)."""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


@contextlib.contextmanager
def _without_tune_console() -> Iterator[None]:
    """Tune's console output (its experiment table, where results go) off while a phase runs: the driver says
    in its own lines what happens. Tune reads the switch when an experiment starts; a user's own value stays."""
    saved = os.environ.get(TUNE_CONSOLE_SWITCH)
    os.environ.setdefault(TUNE_CONSOLE_SWITCH, "0")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TUNE_CONSOLE_SWITCH, None)


@contextlib.contextmanager
def _tune_logs_in(path: Path) -> Iterator[None]:
    """Ray Tune's and Ray Train's own log lines go to `path`, not to the terminal, while a phase runs: the
    driver says in its own words what happened to a trial or to the study."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _QuietFileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in TUNE_LOGGERS]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate
        handler.close()


def make_trainable(context: TrialContext, cpu: float, gpu: float, workers: int = 1) -> Any:
    """The phase's trainable: `run_trial` with one trial's resources, or with `workers` > 1 a `DataParallelTrial`
    whose Train run takes `workers` × (`cpu`, `gpu`)."""
    if workers == 1:
        return tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": cpu, "gpu": gpu})
    scaling = Scaling(workers, cpu, gpu)
    trainable = tune.with_parameters(DataParallelTrial, context=context, scaling=scaling)
    return tune.with_resources(trainable, DRIVER_RESOURCES)


def run_phase(phase: Phase, context: TrialContext, *, cpu: float, gpu: float, max_concurrent: int,
              max_failures: int, tune_dir: Path, callbacks: list[tune.Callback], signals: StopSignals,
              trainable: Any = None, workers: int = 1) -> None:
    """Run the phase's remaining trials as one Tune experiment (returns when the phase is finished or
    the driver was asked to stop). `trainable` replaces the training of a trial (benchmarks emulate it). With
    `workers` > 1 each trial is a data-parallel Ray Train run of that many processes of `cpu` and `gpu` each; its
    trial actors are not reused, since Tune keeps a finished trial's actor for reuse without stopping it, and the
    Train run it drives would hold its workers' resources meanwhile."""
    attempt = 1 + sum(1 for _ in tune_dir.glob(f"{phase.name}-*"))
    tuner = tune.Tuner(
        trainable or make_trainable(context, cpu, gpu, workers),
        tune_config=tune.TuneConfig(
            search_alg=PhaseSearcher(phase), scheduler=PhaseScheduler(phase), num_samples=-1,
            max_concurrent_trials=max_concurrent, reuse_actors=workers == 1,
            trial_name_creator=lambda t: trial_task(t.config).name,
            trial_dirname_creator=lambda t: f"{trial_task(t.config).name}-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{phase.name}-{attempt}", storage_path=str(tune_dir), stop=SignalStopper(signals, phase),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[PhaseRecorder(phase), *callbacks], verbose=0,
        ),
    )
    signals.in_phase = True
    try:
        with _tune_logs_in(tune_dir / f"{phase.name}-{attempt}" / "tune.log"), _without_tune_console():
            tuner.fit()
    finally:
        signals.in_phase = False
