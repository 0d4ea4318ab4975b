"""Data-parallel trials. With `resources.workers` > 1 a trial is a Ray Train data-parallel run (`TorchTrainer`,
one process per worker, each with the spec's `cpu` and `gpu`) that a small Tune trial (`DataParallelTrial`, no CPU
or GPU of its own) drives. Rank 0 sends each evaluation to the trial, which returns it to Tune and answers at Tune's
next step whether training goes on; the workers wait for the answer. So a trial the study stops (successive halving,
a rung not decided yet) never trains or writes a checkpoint past the evaluation that stopped it, as a
single-process trial, and its Train run ends gracefully while Tune stops the trial, giving its workers' placement
group back. (Ray's `TuneReportCallback` forwards reports without such an answer, so workers run ahead by up to a
few evaluations; and a Train run whose controller is killed with the trial keeps its placement group until the
driver exits.)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from fakd.config import RunConfig
from fakd.errors import UserError
from fakd.results import StudyDir
from fakd.study.handoff import TrialContext, trial_task
from fakd.study.lock import training_in
from fakd.train import DistContext, NonFiniteLossError, TeacherArtifact, ensure_teacher, teacher_key, train_student
from fakd.train.teacher import TEACHER_FILE, read_teacher_file

# What the Tune trial driving a data-parallel run reserves: nothing its workers need (a trial's placement group may
# not be empty, so one byte of memory). `search.max_concurrent` bounds the trials in flight.
DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 1}
STOP_GRACE_S = 60.0  # how long a stopped trial waits for its Train run to end
POLL_S = 0.5


@dataclass(frozen=True)
class Scaling:
    """The processes one run trains with: `workers` of `cpu` CPUs and `gpu` GPUs each."""

    workers: int = 1
    cpu: float = 1.0
    gpu: float = 0.0

    def scaling_config(self) -> Any:
        import ray.train

        per_worker = {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu > 0 else {})}
        return ray.train.ScalingConfig(num_workers=self.workers, use_gpu=self.gpu > 0,
                                       resources_per_worker=per_worker)


class TrialStopped(Exception):
    """The study stopped the trial at its last report: every worker returns."""


class DataParallelTrial(tune.Trainable):
    """A trial trained by a Ray Train run: each Tune step returns rank 0's next evaluation (the first ones a resumed
    trial replays), the last step repeats the last evaluation with `done`; stopping the trial ends the
    run gracefully (see the module docstring)."""

    def setup(self, config: dict[str, Any], context: TrialContext, scaling: Scaling) -> None:
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        self.context, self.scaling = context, scaling
        self.relay = self._launch(config)
        self.last: dict[str, Any] = {}

    def _launch(self, config: dict[str, Any]) -> RunRelay:
        from ray.util.queue import Queue

        root = Path(self.context.study_root)
        task = trial_task(config)
        results, replies = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
        loop_config = {"run": task.run, "study_root": str(root), "work": str(task.work_dir(root)),
                       "teacher": self.context.teacher_artifact(),
                       "gpu": self.scaling.gpu > 0, "results": results, "replies": replies}
        trainer = _trainer(_trial_worker, loop_config, self.scaling, str(root / "tune"),
                           task.key.replace("/", "-"))
        return RunRelay(trainer.fit, results, replies)

    def step(self) -> dict[str, Any]:
        result = self.relay.next_result()
        if result is None:
            return {**self.last, "done": True}
        self.last = result
        return result

    def cleanup(self) -> None:
        self.relay.stop()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Nothing to save: the trial's state is its latest checkpoint in the study."""
        return None

    def load_checkpoint(self, checkpoint: Any) -> None:
        """Nothing to load: the Train run resumes from the trial's latest checkpoint in the study."""


class RunRelay:
    """One Train run seen from the Tune trial's process: `fit` runs in a thread; rank 0 puts each evaluation on
    `results` (None after the last) and waits on `replies` for True (go on) or False (stop)."""

    def __init__(self, fit: Callable[[], Any], results: Any, replies: Any, poll_s: float = POLL_S,
                 grace_s: float = STOP_GRACE_S) -> None:
        self.results, self.replies, self.poll_s, self.grace_s = results, replies, poll_s, grace_s
        self.failure: list[BaseException] = []
        self.answer_due = False  # rank 0 waits for an answer to the last evaluation
        self.thread = threading.Thread(target=self._run, args=(fit,), name="fakd-train-run", daemon=True)
        self.thread.start()

    def _run(self, fit: Callable[[], Any]) -> None:
        try:
            fit()
        except BaseException as exc:  # raised in the trial's step
            self.failure.append(exc)

    def next_result(self) -> dict[str, Any] | None:
        """Tell rank 0 to go on, then its next evaluation; None once the run ended. A failed run's error is raised
        after every evaluation it made before failing; a `UserError` of any worker (a damaged data file) becomes
        the report `{"user_error": message}` instead."""
        from ray.util.queue import Empty

        if self.answer_due:
            self.replies.put(True)
            self.answer_due = False
        while True:
            try:
                item = self.results.get(timeout=self.poll_s)
            except Empty:
                if self.thread.is_alive() or not self.results.empty():
                    continue
                item = None
            if item is None:
                self.thread.join()
                if self.failure:
                    error = user_error_in(self.failure[0])
                    if error is not None:  # as a single-process trial reports it: the study stops, no retry
                        return {"user_error": error.format()}
                    raise self.failure[0]
                return None
            self.answer_due = True
            return item

    def stop(self) -> None:
        """Tell rank 0 to stop (now, or at its next evaluation) and wait for the run to end."""
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.replies.put(False)
        self.answer_due = False
        self.thread.join(timeout=self.grace_s)


def _trainer(worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], scaling: Scaling,
             storage: str, name: str) -> Any:
    """A TorchTrainer of `scaling.workers` processes running `worker(loop_config)`; its own records under
    `storage/<name>-<random>`.

    Ray Train retries nothing itself: a failed run fails the trial, which Tune retries from its checkpoint
    (`search.max_failures`). Each run gets a new name, so Ray Train never restores an earlier attempt's state."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        worker, train_loop_config=loop_config, scaling_config=scaling.scaling_config(),
        run_config=ray.train.RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )


class ReportChannel:
    """The workers' side of `RunRelay`: rank 0 sends, every process learns the answer."""

    def __init__(self, results: Any, replies: Any, dist: DistContext) -> None:
        self.results, self.replies, self.dist = results, replies, dist

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Send one evaluation; raise `TrialStopped` in every process when the study stops the trial here."""
        go = None
        if self.dist.is_main:
            self.results.put(metrics)
            go = bool(self.replies.get())
        if not self.dist.broadcast_object(go):
            raise TrialStopped

    def close(self, last: dict[str, Any] | None = None) -> None:
        """Rank 0 sends `last` (a final report no process waits on) and the end of the reports."""
        if self.dist.is_main:
            if last is not None:
                self.results.put(last)
            self.results.put(None)


def _setup_worker(gpu: bool) -> DistContext:
    """This Train worker's process group (initialised by the TorchTrainer) and, on GPUs, its own device."""
    if gpu:
        import ray.train.torch
        import torch

        torch.cuda.set_device(ray.train.torch.get_device())
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    return DistContext.current()


def _trial_worker(config: dict[str, Any]) -> None:
    """One process of a data-parallel trial: the student's training, resumed from the trial's latest checkpoint."""
    dist = _setup_worker(config["gpu"])
    channel = ReportChannel(config["results"], config["replies"], dist)
    cfg: RunConfig = config["run"]  # validated once, by the driver
    teacher: TeacherArtifact | None = config["teacher"]
    with training_in(config["study_root"]):
        try:
            train_student(cfg, teacher, Path(config["work"]), report=channel.report, resume_from="latest",
                          replay=True, progress=False, dist=dist)
        except TrialStopped:
            return
        except NonFiniteLossError as exc:  # every process sees the same pooled loss: all of them end here
            channel.close({"iteration": exc.iteration, "diverged": True, "error": str(exc)})
            return
        channel.close()


# ------------------------------------------------------------------------------------------ data-parallel teacher


def ensure_teacher_data_parallel(cfg: RunConfig, study: StudyDir, scaling: Scaling) -> TeacherArtifact:
    """`fakd.train.ensure_teacher` into the study's teacher cache, with the teacher trained by `scaling.workers`
    processes (a Ray Train run logging under the study's `tune/`) when it is not cached yet; a model-zoo or given
    teacher is never trained."""
    if cfg.teacher.is_zoo or cfg.teacher.checkpoint or scaling.workers == 1:
        with training_in(study.root):
            return ensure_teacher(cfg, study.teachers, progress=False)
    key = teacher_key(cfg, scaling.workers)
    path = study.teachers / key / TEACHER_FILE
    if not path.is_file():
        loop_config = {"run": cfg, "study_root": str(study.root),
                       "cache": str(study.teachers), "gpu": scaling.gpu > 0}
        _fit_in_thread(_trainer(_teacher_worker, loop_config, scaling, str(study.tune), "teacher").fit)
    return TeacherArtifact(path, key, read_teacher_file(path).get("metrics", {}))


def _fit_in_thread(fit: Callable[[], Any]) -> None:
    """Run `fit` off the main thread (Ray Train then leaves the process's SIGINT handler alone); raise its error."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fit()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="fakd-teacher-run", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise user_error_in(failure[0]) or failure[0]


def user_error_in(exc: BaseException) -> UserError | None:
    """The `UserError` behind a failed Train run: `exc` itself, one that a worker raised (Ray Train gathers them
    by rank in `worker_failures`) or one of their causes; None when the run failed for another reason."""
    if isinstance(exc, UserError):
        return exc
    for failure in (getattr(exc, "worker_failures", None) or {}).values():
        if (found := user_error_in(failure)) is not None:
            return found
    return user_error_in(exc.__cause__) if exc.__cause__ is not None else None


def _teacher_worker(config: dict[str, Any]) -> None:
    dist = _setup_worker(config["gpu"])
    with training_in(config["study_root"]):
        ensure_teacher(config["run"], Path(config["cache"]), progress=False,
                       log=_write_line if dist.is_main else None, dist=dist)


def _write_line(message: str) -> None:
    """One line on stdout (Ray Train's `print` of a worker would show it twice: as a print and a log record)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()
