"""SIGINT and SIGTERM in a study driver: stop cleanly, leave a study that resumes exactly.

The first signal asks the running phase to stop: Ray Tune stops its trials (each has its latest
checkpoint in the study), no trial or phase is marked finished that did not finish, and the command
ends with exit 128 + the signal number. Outside a phase (the teacher, bookkeeping) and on a second signal
the driver stops at once; the study's records are written atomically, so it still resumes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StudyInterrupted(KeyboardInterrupt):
    """The driver was stopped by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Installs the driver's handlers for SIGINT and SIGTERM while a study command runs."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.requested: int | None = None
        self.in_phase = False  # a Tune phase runs: the first signal stops it gracefully
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune's own handler would end a phase as if finished
        self.previous = {signum: signal.getsignal(signum) for signum in HANDLED}
        self.install()
        return self

    def install(self) -> None:
        """Take the signals back from whoever replaced the handlers since (`ray.init` sets its own for SIGTERM)."""
        for signum in HANDLED:
            signal.signal(signum, self._handle)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None and self.in_phase:
            self.requested = signum
            self.log(f"{signal.Signals(signum).name}: stopping the running trials (their checkpoints are kept); "
                     "send it again to stop at once")
            return
        raise StudyInterrupted(self.requested or signum)

    def check(self) -> None:
        """Raise `StudyInterrupted` when a signal asked the study to stop."""
        if self.requested is not None:
            raise StudyInterrupted(self.requested)
