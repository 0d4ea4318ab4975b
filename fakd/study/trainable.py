"""The Ray Tune trainable: a thin adapter from a trial (its key and resolved run config) to the trainer.

The trial never opens the spec: the driver resolved its `RunConfig` once. It writes its checkpoints into
its own directory of the study and reports each evaluation to Tune; the driver records the reports. A
trial started again (after a fault, a pause at a rung or a stopped driver) continues from its latest
checkpoint and first reports that checkpoint's metrics again, so nothing reported is ever lost.
With `resources.workers` > 1 a trial is a data-parallel Ray Train run (`fakd.study.data_parallel`); the trainable
of either kind is made in `fakd.study.tune_glue`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from fakd.errors import UserError
from fakd.faults import CPU_ALLOCATOR_FAILED, machine_fault
from fakd.study.handoff import TrialContext, trial_task
from fakd.study.lock import training_in
from fakd.train import NonFiniteLossError, train_student
from fakd.train.checkpoint import latest_checkpoint

MEMORY_ERRORS = (MemoryError, torch.OutOfMemoryError)
"""Host and device memory exhausted inside the trial (the kernel's OOM killer ends the process instead)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the trial's memory is exhausted, on the host or the device."""
    return isinstance(exc, MEMORY_ERRORS) or (isinstance(exc, RuntimeError) and CPU_ALLOCATOR_FAILED in str(exc))


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    tune.report(metrics)


def _memory_error(exc: BaseException) -> str:
    """One line: the exception's type and its message (PyTorch's allocator message, without its source location)."""
    text = " ".join(str(exc).split())
    if CPU_ALLOCATOR_FAILED in text:
        text = text[text.index(CPU_ALLOCATOR_FAILED):]
    return f"{type(exc).__name__}: {text}"[:300]


def run_trial(config: Mapping[str, Any], context: TrialContext) -> None:
    """Train one trial (its `TrialTask` in `config`), continuing from its latest checkpoint when there is one."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    task = trial_task(config)
    cfg = task.run
    root = Path(context.study_root)
    work = task.work_dir(root)
    teacher = context.teacher_artifact()
    with training_in(root):
        resume = "latest" if latest_checkpoint(work / "checkpoints") else None
        try:
            train_student(cfg, teacher, work, report=_report, resume_from=resume, replay=True, progress=False)
        except NonFiniteLossError as exc:  # the same seed would diverge again: not an infrastructure fault
            tune.report({"iteration": exc.iteration, "diverged": True, "error": str(exc)})
        except UserError as exc:  # a damaged data file fails every retry alike: the study stops and says which
            tune.report({"user_error": exc.format()})
        except Exception as exc:
            if is_out_of_memory(exc):  # the configuration does not fit: a retry would run out of memory again
                tune.report({"out_of_memory": _memory_error(exc)})
                return
            # a full or read-only disk stops the study (a retry would fail alike), trial kept
            fault = machine_fault(exc, root)
            if fault is None:
                raise
            tune.report({"machine_fault": fault})
