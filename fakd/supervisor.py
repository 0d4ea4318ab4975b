"""The parent of a study driver: it outlives a driver that Ray ends, says why in one line, and stops what is left.

When the local Ray runtime's raylet or GCS server dies, Ray's core worker ends the driver process at once (no
Python handler runs), so a driver cannot report that itself. `launch.py sweep|resume|retrain|demo` therefore runs
the driver as a child process and waits for it:

- Signals: the child runs in its own process group and the parent forwards SIGINT, SIGTERM and SIGHUP to it, so
  Ctrl-C and `kill PID` reach the driver exactly once, as before. A parent killed outright (SIGKILL) takes the
  driver with it (`PR_SET_PDEATHSIG`), and Ray's own processes follow the driver as they always do.
- Ray lost: the driver tells the parent, on a pipe, the PIDs of the raylet and GCS server it started
  (`note_ray_runtime`). If one of them ends while the driver still uses it and the driver then fails, the parent
  prints one line naming the process and the `resume` command, and exits `EXIT_MACHINE_FAULT`.
- Ray's own lines (the raylet's and GCS server's messages relayed to the driver, the core worker's log lines)
  stay out of the terminal: the parent relays the driver's output and appends those lines to `STUDY/tune/ray.log`.
- Leftovers: the parent is a child subreaper, so processes orphaned by a dead raylet (Ray's agents, idle
  workers) become its children; once the driver has ended, every process still below the parent is stopped.

This module imports nothing heavy: the parent never loads torch, Ray or timm.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from fakd.faults import EXIT_MACHINE_FAULT

NOTES_ENV = "FAKD_DRIVER_NOTES"
"""Set in the driver's environment by its parent: the file descriptor of a pipe on which the driver writes its
notes (JSON lines: the study it drives, its Ray daemons). The driver takes it out of its environment at start, so
no process it starts writes there; a pipe leaves no file behind, however either process ends."""
DRIVING = ("sweep", "resume", "retrain", "extend", "demo")
"""Commands that drive a study (and start Ray): the ones run under a parent."""
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RAY_DAEMONS = ("raylet", "gcs_server")
"""The local Ray runtime's processes whose death ends the driver."""
EXPECTED_EXITS = (0, 2, EXIT_MACHINE_FAULT, 128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP)
"""Exit statuses the driver chose itself: it has already said why."""
RAY_LINE = re.compile(r"\((?:pid=)?(?:raylet|gcs_server)[,)]|^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")
"""A line Ray's core writes to the driver's stderr: relayed from the raylet or GCS server, or a C++ log line."""
RAY_LOG = "tune/ray.log"
"""Where, in the study, the parent appends the Ray lines it keeps out of the terminal."""
STOP_GRACE_S = 5.0
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def supervised(argv: Sequence[str]) -> bool:
    """Whether `launch.py ARGV` should run its driver under a parent: a driving command, on Linux (where a parent
    can take over orphans and bind the child's life to its own), and not already the child."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return command in DRIVING and sys.platform == "linux" and NOTES_ENV not in os.environ


_notes_fd: int | None = None
"""In a driver run under a parent: the write end of the notes pipe (see `NOTES_ENV`)."""


def adopt_parent() -> None:
    """In a process that may be a driver run under a parent: take the notes pipe out of the environment."""
    global _notes_fd
    value = os.environ.pop(NOTES_ENV, None)
    if value is not None and value.isdigit():
        _notes_fd = int(value)


def run_supervised() -> int:
    """Run this command (`sys.orig_argv`) again, as the child driver; return its exit status, or
    `EXIT_MACHINE_FAULT` with one line when the driver died because its Ray runtime did."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    read_end, write_end = os.pipe()
    notes: dict = {}
    # re-run exactly what was typed (interpreter flags and script included), now as the driver
    command = [sys.executable, *sys.orig_argv[1:]]
    try:
        child = subprocess.Popen(command, env={**os.environ, NOTES_ENV: str(write_end)}, pass_fds=(write_end,),
                                 process_group=0, preexec_fn=_die_with_parent, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    readers = [threading.Thread(target=_read_notes, args=(read_end, notes), daemon=True)]
    readers += [threading.Thread(target=_relay, args=(source, target, notes), daemon=True)
                for source, target in ((child.stdout, sys.stdout), (child.stderr, sys.stderr))]
    for reader in readers:
        reader.start()
    previous = {signum: signal.signal(signum, lambda signum, _frame: _forward(child, signum)) for signum in FORWARDED}
    lost: tuple[str, int] | None = None
    try:
        while True:
            try:
                child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                lost = lost or _lost_daemon(notes)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_descendants()  # Ray's processes hold the driver's output open: a relay ends once they have ended
        for reader in readers:
            reader.join(timeout=STOP_GRACE_S)
        study = notes.get("study")
    status = child.returncode if child.returncode >= 0 else 128 - child.returncode
    if lost is not None and status not in EXPECTED_EXITS:
        name, pid = lost
        hint = f"; resume with: python launch.py resume {study}" if study else ""
        print(f"error: the local Ray runtime was lost: its {name} (PID {pid}) ended, and with it the driver{hint}",
              file=sys.stderr)
        return EXIT_MACHINE_FAULT
    return status


def _read_notes(fd: int, notes: dict) -> None:
    """Apply each note the driver writes (a JSON object per line) to `notes`, until the driver has ended."""
    with os.fdopen(fd, "rb") as stream:
        for line in stream:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    notes.update(value)


WORKER_LINE = re.compile(r"^(?:\x1b\[\d+m)?\([^)]*pid=\d+[^)]*\)(?:\x1b\[0m)? ?")
"""The prefix Ray puts on a line a worker process printed: `(run_trial pid=123) `, coloured on a terminal."""
IGNORED_AT_EXIT = "Exception ignored in:"
HELD_LINES = 40
"""The longest worker block held back to see whether it is Ray's teardown noise (then it is printed after all)."""


def _relay(stream: IO[bytes], target: IO[str], notes: dict) -> None:
    """Copy the driver's stdout or stderr to this process's `target`, line by line, except Ray's own lines (and the
    indented lines that continue them) and the traceback a trial process prints when Ray's SIGTERM handler ends it
    at the end of a phase (`Exception ignored in: ...` through `SystemExit`, raised in Ray's `sigterm_handler`):
    these go to the study's `RAY_LOG` once the driver has noted its study."""
    internal = False
    held: list[str] = []  # a worker's "Exception ignored in:" block, until its last line says what it was
    prefix = ""  # the held block's worker prefix
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        worker = WORKER_LINE.match(line)
        if held and worker is not None and worker.group(0) == prefix:
            held.append(line)
            body = line[worker.end():]
            if body.startswith("SystemExit") or len(held) >= HELD_LINES:
                if body.startswith("SystemExit") and any("sigterm_handler" in kept for kept in held):
                    for kept in held:
                        _append_ray_line(notes, kept)
                else:
                    _write(target, "".join(held))
                held = []
            continue
        if worker is not None and line[worker.end():].startswith(IGNORED_AT_EXIT):
            _write(target, "".join(held))  # another worker's block left open: shown as it came
            held, prefix = [line], worker.group(0)
            continue
        internal = bool(RAY_LINE.search(line)) or (internal and line[:1] in (" ", "\t", "\n"))
        if internal:
            _append_ray_line(notes, line)
            continue
        _write(target, line)
    _write(target, "".join(held))  # the stream ended inside a block: nothing is lost


def _write(target: IO[str], text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`) drops the rest, as it would
        target.write(text)
        target.flush()


def _append_ray_line(notes: dict, line: str) -> None:
    study = notes.get("study")
    if not study:
        return
    root = Path(study).resolve()
    path = root / RAY_LOG
    with contextlib.suppress(OSError):
        if path.parent.resolve().is_relative_to(root) and not path.is_symlink():  # never a write out of the study
            path.parent.mkdir(exist_ok=True)
            with open(path, "a", encoding="utf-8") as log:
                log.write(line)


def _die_with_parent() -> None:
    """In the child, before it runs: end it (SIGKILL) when its parent ends, as a driver ends when killed outright."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _forward(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _lost_daemon(notes: dict) -> tuple[str, int] | None:
    """The first of the driver's Ray daemons found dead while the driver still means to use them."""
    if notes.get("stopping"):
        return None
    for name, pid in dict(notes.get("ray") or {}).items():
        if isinstance(pid, int) and not _alive(pid):
            return name, pid
    return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _stop_descendants() -> None:
    """SIGTERM every process still below this one (orphans adopted as subreaper), then SIGKILL what remains after
    `STOP_GRACE_S`; reap them all."""
    def below() -> list[int]:
        pending, found = [os.getpid()], []
        while pending:
            for child in _children(pending.pop()):
                found.append(child)
                pending.append(child)
        return found

    for signum in (signal.SIGTERM, signal.SIGKILL):
        remaining = below()
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + STOP_GRACE_S
        while remaining and time.monotonic() < deadline:
            _reap()
            remaining = [pid for pid in remaining if _alive(pid)]
            time.sleep(0.1)
    _reap()


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def driver_pid() -> int:
    """The PID a user signals to stop this driver: its parent's when it runs under one (which forwards signals)."""
    return os.getppid() if _notes_fd is not None else os.getpid()


def note_study(root: str | Path) -> None:
    """In a driver run under a parent: note the study it drives (for the `resume` hint). A no-op otherwise."""
    _update_notes(study=str(root))


def note_ray_runtime(stopping: bool = False) -> None:
    """In a driver run under a parent: note the Ray daemons this process started (its child processes named
    raylet and gcs_server), or, with `stopping`, that it is about to stop them on purpose. A no-op otherwise."""
    if stopping:
        _update_notes(stopping=True)
        return
    daemons = {}
    for child in _children(os.getpid()):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{child}/comm").read_text().strip()
            if name in RAY_DAEMONS:
                daemons[name] = child
    _update_notes(ray=daemons, stopping=False)


def _update_notes(**values: object) -> None:
    if _notes_fd is None:
        return
    with contextlib.suppress(OSError):  # one write of one short line: atomic on a pipe
        os.write(_notes_fd, (json.dumps(values) + "\n").encode())
