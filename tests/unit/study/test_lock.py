"""`fakd.study.lock`: one driver per study (a lock naming its holder, waited for while a killed holder lets go), and
every process that trains in a study holding the shared training lock, which a new driver waits for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fakd.errors import UserError
from fakd.results.layout import StudyDir


@pytest.mark.driver
def test_status_names_a_driver_only_while_it_holds_the_lock(tmp_path: Path) -> None:
    """A lock file naming a holder that no longer holds the lock (a copied study, a killed driver) names nobody."""
    import json as json_module

    from fakd.results.layout import StudyDir, driver_state
    from fakd.study.lock import StudyLock

    study = StudyDir(tmp_path / "study")
    study.root.mkdir()
    assert driver_state(study) is None
    with StudyLock(study, "resume"):
        assert driver_state(study) is not None and "launch.py resume" in driver_state(study)
        stale = study.lock_file.read_text()
    assert driver_state(study) is None
    study.lock_file.write_text(stale)  # as `cp -a` copies it, or a driver killed by SIGKILL leaves it
    assert json_module.loads(stale)["pid"] > 0 and driver_state(study) is None


def test_a_lock_whose_named_holder_has_ended_is_waited_for_until_its_process_lets_go(tmp_path: Path) -> None:
    """A driver run under `fakd.supervisor` names its parent in the lock file; a parent killed outright takes the
    driver with it, which lets go of the lock a moment later. The next driver waits for that moment, and only when
    the named process has ended: a live holder is refused at once."""
    import fcntl
    import json as json_module
    import os
    import socket
    import subprocess
    import threading

    from fakd.study.lock import StudyLock

    study = StudyDir(tmp_path / "study")
    study.root.mkdir()
    ended = subprocess.Popen(["true"])
    ended.wait()
    held = os.open(study.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": "launch.py resume"}
    study.lock_file.write_text(json_module.dumps(holder))
    with pytest.raises(UserError, match=f"PID {os.getpid()}"), StudyLock(study, "resume"):
        pass
    study.lock_file.write_text(json_module.dumps({**holder, "pid": ended.pid}))
    threading.Timer(0.5, os.close, [held]).start()  # the exiting driver lets go
    started = time.monotonic()
    with StudyLock(study, "resume"):
        assert time.monotonic() - started >= 0.4
        assert json_module.loads(study.lock_file.read_text())["pid"] == os.getpid()


HOLD_TRAINING_LOCK = """
import sys, time
from fakd.study.lock import training_in
with training_in(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
print(time.time(), flush=True)  # when it let go
"""


def hold_training_lock(root: Path, seconds: float) -> Any:
    """A process that trains in the study at `root` for `seconds` (as a killed driver's Ray workers go on)."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLD_TRAINING_LOCK, str(root), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


@pytest.mark.driver
def test_a_driver_waits_for_the_training_processes_of_an_earlier_one(tmp_path: Path) -> None:
    from fakd.results.layout import StudyDir
    from fakd.study.lock import wait_for_earlier_training

    study = StudyDir(tmp_path / "study")
    study.root.mkdir()
    lines: list[str] = []
    wait_for_earlier_training(study, lines.append, timeout_s=5)
    assert lines == []  # nobody trains: no wait, no line
    holder = hold_training_lock(study.root, 1.5)
    wait_for_earlier_training(study, lines.append, timeout_s=60, poll_s=0.05)
    went_on = time.time()
    assert went_on >= float(holder.stdout.readline()), "the driver went on while the earlier process still trained"
    holder.wait()
    assert lines == ["waiting for the training processes of an earlier driver of this study to end"]

    holder = hold_training_lock(study.root, 60)
    try:
        with pytest.raises(UserError) as info:
            wait_for_earlier_training(study, lines.append, timeout_s=0.5, poll_s=0.05)
    finally:
        holder.kill()
        holder.wait()
    assert info.value.key == "STUDY_DIR" and "still train in" in info.value.message
    assert "\n" not in info.value.format()


def test_trials_and_the_teacher_train_holding_the_training_lock(tmp_path: Path, monkeypatch) -> None:
    """Every process that trains in a study holds the shared lock while it trains (a new driver cannot take it)."""
    import fcntl
    import os

    from conftest import write_spec

    import fakd.train
    from fakd.results.layout import StudyDir
    from fakd.spec import load_spec
    from fakd.study import teacher, trainable
    from fakd.study.handoff import TrialContext, TrialTask

    study = StudyDir(tmp_path / "study")
    study.root.mkdir()
    held: list[bool] = []

    def lock_is_held(*args: Any, **kwargs: Any) -> None:
        fd = os.open(study.training_lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)

    monkeypatch.setattr(trainable, "train_student", lock_is_held)
    monkeypatch.setattr(fakd.train, "ensure_teacher", lock_is_held)
    cfg = load_spec(write_spec(tmp_path)).run_config("baseline")
    trainable.run_trial(TrialTask("search/baseline-000", "baseline", cfg).as_config(),
                        TrialContext(str(study.root), None))
    teacher._teacher_in_study(cfg, study)
    assert held == [True, True]
    lock_is_held()
    assert held[-1] is False, "the lock outlived the training"
