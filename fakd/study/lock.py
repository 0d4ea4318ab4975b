"""One driver per study: an exclusive lock on the study directory, held while a command drives it.

The lock is `flock` on `STUDY/.lock`; the file names the holder (host, PID, start time, command) for the
message a second driver gets. The kernel releases the lock when the holder exits, however it exits, so
a lock is never stale on one host. On a shared file system the lock is as good as the file system's: NFSv4
and Lustre/GPFS/BeeGFS with locking enabled carry it across hosts (a crashed host's lock is released when
its lease expires, about 90 s on NFSv4); a file system mounted without lock support (NFSv3 without lockd,
`nolock`, some FUSE mounts) only excludes drivers on the same host. `status` and `export` take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from types import TracebackType

from fakd.errors import UserError
from fakd.results.layout import StudyDir, describe_holder, now, read_lock_holder


class StudyLock:
    """`with StudyLock(study, "resume"):` — one line and exit 2 for a second driver, never a wait."""

    def __init__(self, study: StudyDir, command: str) -> None:
        self.study, self.command = study, command
        self.fd: int | None = None

    def __enter__(self) -> StudyLock:
        try:
            fd = os.open(self.study.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock {self.study.root}: {exc.strerror}", key="STUDY_DIR") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.study.root} is being driven by {describe_holder(read_lock_holder(self.study))}; "
                            "wait for it to finish or stop it first", key="STUDY_DIR") from None
        except OSError as exc:  # ENOLCK, ENOSYS, EOPNOTSUPP: a file system mounted without lock support
            os.close(fd)
            raise UserError(f"cannot lock {self.study.lock_file}: {exc.strerror}; the file system does not support "
                            "locks (mount it with locking, e.g. NFS without `nolock`), so two drivers could not be "
                            "kept apart", key="STUDY_DIR") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": now(),
                  "command": f"launch.py {self.command}", "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
