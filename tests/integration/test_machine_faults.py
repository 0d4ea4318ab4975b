"""Faults of the machine: a study whose disk fills up, or whose local Ray runtime dies, stops with one line and the
resume command, keeps its trials, and resumes to exactly its budget once the machine is fixed."""

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import sqlalchemy.exc
from conftest import wait_for, write_spec
from test_study_resume import assert_exact_budget, finished_and_running, start_driver, study_spec

from fakd.cli import main
from fakd.faults import EXIT_MACHINE_FAULT, machine_fault, storage_state
from fakd.results.layout import FORMAT, StudyDir, write_json
from fakd.study import resume


def test_a_full_or_read_only_disk_is_named_through_wrapping_errors(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", "/s/trials/x/trial.json")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("Tune callback failed") from exc
    except RuntimeError as wrapped:
        assert machine_fault(wrapped, tmp_path) == "no space left on the device holding /s/trials/x/trial.json"
    read_only = OSError(errno.EROFS, "Read-only file system", "/s/study.json")
    assert machine_fault(read_only, tmp_path) == "the file system holding /s/study.json is read-only"
    sqlite_full = sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    assert machine_fault(sqlite_full, tmp_path) == f"no space left for the Optuna storage of {tmp_path}"
    assert machine_fault(ValueError("a bug"), tmp_path) is None  # a healthy disk: not the machine's fault
    assert storage_state(tmp_path) is None


@contextlib.contextmanager
def small_file_system(path: Path, megabytes: int):
    """A tmpfs of `megabytes` at `path` (skips where this process may not mount one)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): a full disk needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * (1 << 20))
            handle.flush()
    return filler


@pytest.mark.ray
@pytest.mark.driver
def test_a_full_disk_stops_the_search_in_one_line_and_resume_finishes_the_budget(tmp_path, given_teacher):
    with small_file_system(tmp_path / "disk", 256) as disk:
        spec = study_spec(tmp_path, given_teacher)
        study_dir = disk / "studies" / "tiny"
        log = tmp_path / "driver.log"
        driver = start_driver(["sweep", str(spec), "--storage", str(disk / "studies")], log)
        try:
            wait_for(lambda: finished_and_running(study_dir), 300, "one finished and one running trial",
                     driver=driver, log=log)
            filler = fill(disk)
            code = driver.wait(timeout=180)
        finally:
            if driver.poll() is None:
                driver.kill()
        output = log.read_text()
        assert code == EXIT_MACHINE_FAULT, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert last.startswith("error: no space left") and f"resume with: python launch.py resume {study_dir}" in last
        assert "Traceback" not in output, output[-3000:]
        assert "Token authentication is enabled" not in output and "Started a local Ray" not in output  # Ray's noise
        assert not [p for p in study_dir.rglob("*") if ".tmp-" in p.name]
        filler.unlink()
        resumed = start_driver(["resume", str(study_dir)], tmp_path / "resume.log")
        assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
        assert_exact_budget(study_dir)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(PID, start time) of every process below `pid`: a PID alone could be reused once its process ends."""
    found, pending = [], [pid]
    while pending:
        for task in Path(f"/proc/{pending.pop()}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in map(int, (task / "children").read_text().split()):
                    with contextlib.suppress(OSError):
                        found.append((child, Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[19]))
                    pending.append(child)
    return found


def running(process: tuple[int, str]) -> bool:
    pid, started = process
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def named_child(pid: int, name: str) -> int | None:
    for child, _ in descendants(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().strip() == name:
                return child
    return None


@pytest.mark.ray
@pytest.mark.driver
def test_a_lost_raylet_stops_the_driver_in_one_line_and_resume_finishes_the_budget(tmp_path, ray_local,
                                                                                     given_teacher):
    """The raylet of the driver's local Ray is killed mid-search. Ray's core worker then ends the driver process
    itself; its parent (`fakd.supervisor`) says so in one line, exits 75, and leaves no process behind."""
    spec = study_spec(tmp_path, given_teacher, num_samples=2)
    study_dir = tmp_path / "studies" / "tiny"
    log = tmp_path / "driver.log"
    driver = start_driver(["sweep", str(spec), "--storage", str(tmp_path / "studies")], log)
    try:
        wait_for(lambda: finished_and_running(study_dir), 300, "one finished and one running trial", driver=driver,
                 log=log)
        processes = descendants(driver.pid)
        raylet = named_child(driver.pid, "raylet")
        assert raylet is not None and len(processes) > 3, processes
        os.kill(raylet, signal.SIGKILL)
        code = driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == EXIT_MACHINE_FAULT, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last == (f"error: the local Ray runtime was lost: its raylet (PID {raylet}) ended, and with it the driver; "
                    f"resume with: python launch.py resume {study_dir}"), output[-3000:]
    assert "Traceback" not in output and "(raylet)" not in output and "core_worker" not in output, output[-3000:]
    assert not [p for p in processes if running(p)], "a process of the driver outlived it"
    assert not [p for p in study_dir.rglob("*") if ".tmp-" in p.name]

    resume(study_dir)

    assert_exact_budget(study_dir, per_arm=2)


def test_a_study_on_a_read_only_file_system_is_named_in_one_line_and_left_unchanged(tmp_path, capsys):
    """A real read-only mount (a tmpfs remounted read-only): a driving command stops before anything else with exit
    75 and says what to fix; `export --out` into it is refused as read-only; reading commands work."""
    with small_file_system(tmp_path / "disk", 16) as disk:
        study = StudyDir(disk / "study")
        study.root.mkdir()
        write_json(study.marker, {"format": FORMAT, "name": "tiny", "optuna_prefix": "tiny"})
        write_spec(study.root, name=study.spec.name)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert main(["resume", str(study.root)]) == EXIT_MACHINE_FAULT
        err = capsys.readouterr().err
        assert err == (f"error: the file system holding {study.lock_file} is read-only; make it writable (or free "
                       "space), then run the command again\n")
        assert main(["export", str(study.root), "--out", str(study.exports / "table.md")]) == 2
        assert f"cannot write to {study.root} (a read-only file system)" in capsys.readouterr().err
        assert main(["status", str(study.root)]) == 0
        assert sorted(p.name for p in study.root.iterdir()) == sorted([study.marker.name, study.spec.name])
