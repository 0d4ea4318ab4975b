"""Faults of the machine rather than of the study: a full disk or a read-only file system. A study stopped by one
keeps its trials; the command line says the cause in one line, with the `resume` command, and exits with
`EXIT_MACHINE_FAULT`."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

EXIT_MACHINE_FAULT = 75
"""Exit status of a command stopped by its machine (sysexits' EX_TEMPFAIL: try again once it is fixed)."""
MIN_FREE_BYTES = 1 << 20
"""Less free space than this on a study's file system counts as full (a checkpoint or a record no longer fits)."""
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
CPU_ALLOCATOR_FAILED = "DefaultCPUAllocator: can't allocate memory"
"""What PyTorch's CPU allocator raises (a plain `RuntimeError`) when the host refuses memory, e.g. under a ulimit or
a cgroup limit."""


WORKER_DIED = ("ActorDiedError", "WorkerCrashedError", "worker process has died")
"""How Ray says a trial's process ended without raising: a signal, a crash, or the kernel's OOM killer."""
VMSTAT = Path("/proc/vmstat")


def kernel_oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has ended on this host since boot (`oom_kill` in /proc/vmstat,
    Linux 4.13 and later; it counts kills for a cgroup's limit too), or None where the kernel does not say."""
    try:
        for line in VMSTAT.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def killed_for_memory(error: str, oom_kills_at_start: int | None) -> bool:
    """Whether a trial whose process died (Ray's `error`) was ended by the kernel's OOM killer: its process died
    without raising, and the host's OOM kill count rose while it ran. Ray cannot tell a SIGKILL's sender, so the
    count is the evidence; on a remote node it is unseen, and the trial fails as an error."""
    if oom_kills_at_start is None or not any(words in error for words in WORKER_DIED):
        return False
    now = kernel_oom_kills()
    return now is not None and now > oom_kills_at_start


class MachineFault(Exception):
    """The study stopped because its storage failed; what to do is in the message."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes and contexts, and the driver errors that SQLAlchemy wraps (`orig`)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__, getattr(current, "orig", None))
                    if isinstance(e, BaseException)]


def storage_state(path: str | Path) -> str | None:
    """'full' or 'read-only' for the file system holding `path`, else None (also when it cannot be asked)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return "read-only"
    return "full" if stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES else None


def machine_fault(exc: BaseException, study_root: str | Path | None) -> str | None:
    """One line naming the machine fault behind `exc`, or None when it is not one: an OSError saying so anywhere in
    its chain, SQLite's own words for it, or else the study's file system found full or read-only now."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in FULL:
            return f"no space left on the device holding {error.filename or study_root}"
        if isinstance(error, OSError) and error.errno == errno.EROFS:
            return f"the file system holding {error.filename or study_root} is read-only"
        text = str(error).lower()
        if "database or disk is full" in text:
            return f"no space left for the Optuna storage of {study_root}"
        if "readonly database" in text:
            return f"the Optuna storage of {study_root} is read-only"
    state = storage_state(study_root) if study_root is not None else None
    if state == "full":
        return f"no space left on the file system holding {study_root}"
    if state == "read-only":
        return f"the file system holding {study_root} is read-only"
    return None


def with_resume_hint(fault: str, study_root: str | Path) -> str:
    """The line a stopped driver prints for a machine fault: the cause, then what to do."""
    return (f"{fault}; free space (or make it writable again), then resume with: python launch.py resume "
            f"{study_root}")
