"""One driver per study: an exclusive lock on the study directory, held while a command drives it.

The lock is `flock` on `STUDY/.lock`; the file names the holder (host, PID, start time, command) for the
message a second driver gets. The kernel releases the lock when the holder exits, however it exits, so
a lock is never stale on one host. On a shared file system the lock is as good as the file system's: NFSv4
and Lustre/GPFS/BeeGFS with locking enabled carry it across hosts (a crashed host's lock is released when
its lease expires, about 90 s on NFSv4); a file system mounted without lock support (NFSv3 without lockd,
`nolock`, some FUSE mounts) only excludes drivers on the same host. `status` and `export` take no lock.

A second lock keeps a new driver from overlapping the training processes of an earlier one: every process that
trains in the study (trials, their data-parallel workers, the teacher's task) holds a shared `flock` on
`STUDY/.training.lock` while it trains, and a driver starts only once it could take that lock exclusively. A
driver killed with SIGKILL leaves its local Ray's workers training for a few seconds; its successor waits for them
(at most `TRAINING_WAIT_S`), so two processes never write one trial's checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from fakd.errors import UserError
from fakd.faults import MachineFault, machine_fault
from fakd.results.layout import TRAINING_LOCK_FILE, StudyDir, describe_holder, now, read_lock_holder
from fakd.supervisor import driver_pid, note_study

EXITING_HOLDER_WAIT_S = 30.0  # how long a driver waits for the lock of a holder whose named process has ended
TRAINING_WAIT_S = 120.0  # how long a driver waits for an earlier driver's training processes to end


class StudyLock:
    """`with StudyLock(study, "resume"):` — one line and exit 2 for a second driver, never a wait for a running one."""

    def __init__(self, study: StudyDir, command: str) -> None:
        self.study, self.command = study, command
        self.fd: int | None = None

    def __enter__(self) -> StudyLock:
        try:
            fd = os.open(self.study.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            fault = machine_fault(exc, self.study.root)
            if fault is not None:  # a read-only or full file system: fixed on the machine, then the same command
                raise MachineFault(f"{fault}; make it writable (or free space), then run the command again") from None
            raise UserError(f"cannot lock {self.study.root}: {exc.strerror}", key="STUDY_DIR") from None
        try:
            self._lock(fd)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.study.root} is being driven by {describe_holder(read_lock_holder(self.study))}; "
                            "wait for it to finish or stop it first", key="STUDY_DIR") from None
        except OSError as exc:  # ENOLCK, ENOSYS, EOPNOTSUPP: a file system mounted without lock support
            os.close(fd)
            raise UserError(f"cannot lock {self.study.lock_file}: {exc.strerror}; the file system does not support "
                            "locks (mount it with locking, e.g. NFS without `nolock`), so two drivers could not be "
                            "kept apart", key="STUDY_DIR") from None
        holder = {"host": socket.gethostname(), "pid": driver_pid(), "started": now(),
                  "command": f"launch.py {self.command}", "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        note_study(self.study.root)
        return self

    def _lock(self, fd: int) -> None:
        """Take the lock at once, or raise `BlockingIOError`. One wait: a holder on this host whose named PID has
        ended is still exiting (a driver whose parent was killed outright, see `fakd.supervisor`), and its lock is
        released within seconds; it is waited for, at most `EXITING_HOLDER_WAIT_S`."""
        deadline = time.monotonic() + EXITING_HOLDER_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline or not _holder_has_ended(read_lock_holder(self.study)):
                    raise
                time.sleep(0.1)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _holder_has_ended(holder: dict | None) -> bool:
    """Whether the lock file names a process of this host that no longer runs."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


@contextlib.contextmanager
def training_in(study_root: str | Path) -> Iterator[None]:
    """Held by a process while it trains in the study at `study_root`: a shared lock that a new driver waits for
    (see the module docstring). Where the file system has no locks the study lock refused to drive it already;
    a process that cannot take it trains anyway."""
    try:
        fd = os.open(Path(study_root) / TRAINING_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a driver checks, a moment
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_for_earlier_training(study: StudyDir, log: Callable[[str], None], timeout_s: float | None = None,
                              poll_s: float = 0.5) -> None:
    """Return once no process of an earlier driver trains in the study; a `UserError` after `timeout_s`."""
    timeout_s = TRAINING_WAIT_S if timeout_s is None else timeout_s
    try:
        fd = os.open(study.training_lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open {study.training_lock_file}: {exc.strerror}", key="STUDY_DIR") from None
    try:
        deadline, waiting = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"processes of an earlier driver still train in {study.root} after {timeout_s:.0f} s (a Ray "
                        "cluster's workers outlive a killed driver until the cluster notices); stop them (`ray stop` "
                        "on their node) or wait, then run the command again; nothing was changed",
                        key="STUDY_DIR") from None
                if not waiting:
                    log("waiting for the training processes of an earlier driver of this study to end")
                    waiting = True
                time.sleep(poll_s)
    finally:
        os.close(fd)  # releases the lock: this driver's own trials take it shared
