"""Stopping a study driver in every way a user does, then resuming: SIGKILL, SIGINT (Ctrl-C), SIGTERM, a
copy resumed beside its original, and two drivers on one study."""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import searched_spec, wait_for, write_spec

from fakd.cli import main
from fakd.results import open_study_dir, read_trials
from fakd.study import resume

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
# Each trial runs for a second or more (8 evaluations), so the tests reliably see one mid-run before stopping it.
ITERS, EVAL_EVERY = 80, 10


def results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def state(trial_dir: Path) -> str | None:
    path = trial_dir / "trial.json"
    return json.loads(path.read_text())["state"] if path.is_file() else None


def finished_and_running(study_dir: Path) -> bool:
    trials = list((study_dir / "trials" / "search").glob("*"))
    done = [t for t in trials if state(t) == "COMPLETE"]
    running = [t for t in trials if state(t) == "RUNNING" and len(results(t)) >= 1]
    return len(done) >= 1 and len(running) >= 1


def start_driver(args: list[str], log: Path) -> subprocess.Popen:
    """`launch.py ARGS` in a process group of its own, like a command typed in a terminal."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # a W&B service of its own, as a user's
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def optuna_counts(db: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("select s.study_name, t.state, count(*) from trials t join studies s "
                                  "using (study_id) group by s.study_name, t.state").fetchall()
    return {(name, state): count for name, state, count in rows}


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes() if path.is_file() else os.readlink(path).encode())
    return digest.hexdigest()


def study_raw(teacher: Path, **search) -> dict:
    """Two arms, three trials each, one at a time, long enough to be seen mid-run; the given `teacher`."""
    raw = searched_spec(["baseline", "kd"], **{"num_samples": 3, "max_concurrent": 1, "scheduler": "none", **search})
    raw["train"].update(iters=ITERS, eval_every=EVAL_EVERY)
    raw["teacher"]["checkpoint"] = str(teacher)
    return raw


def study_spec(tmp_path: Path, teacher: Path, **search) -> Path:
    return write_spec(tmp_path, study_raw(teacher, **search))


def assert_exact_budget(study_dir: Path, per_arm: int = 3) -> None:
    """Every arm has exactly its budget of finished trials, each trial ran from start to end once."""
    records = read_trials(open_study_dir(study_dir), "search")
    assert sorted((r.arm, r.state) for r in records) == [("baseline", "COMPLETE")] * per_arm + [
        ("kd", "COMPLETE")] * per_arm
    for record in records:
        iterations = [row["iteration"] for row in results(study_dir / "trials" / record.key)]
        assert iterations == list(range(EVAL_EVERY, ITERS + 1, EVAL_EVERY)), (record.key, iterations)
    counts = optuna_counts(study_dir / "optuna.db")
    assert counts == {("tiny/baseline", "COMPLETE"): per_arm, ("tiny/kd", "COMPLETE"): per_arm}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, given_teacher):
    """A study stopped by Ctrl-C (SIGINT to the driver's process group) in the middle of its search."""
    tmp_path = tmp_path_factory.mktemp("interrupted")
    spec = study_spec(tmp_path, given_teacher)
    study_dir = tmp_path / "studies" / "tiny"
    log = tmp_path / "driver.log"
    driver = start_driver(["sweep", str(spec), "--storage", str(tmp_path / "studies")], log)
    try:
        wait_for(lambda: finished_and_running(study_dir), 300, "one finished and one running trial", driver=driver,
                 log=log)
        os.killpg(driver.pid, signal.SIGINT)
        code = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return study_dir, code, log.read_text()


def test_sigint_stops_cleanly_and_resume_completes_exactly_the_budget(interrupted, tmp_path):
    original, code, output = interrupted
    assert code == 130, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last == f"stopped by SIGINT; resume with: python launch.py resume {original}", output[-2000:]
    study_dir = tmp_path / "tiny"
    shutil.copytree(original, study_dir, symlinks=True)
    records = read_trials(open_study_dir(study_dir), "search")
    assert any(r.state == "RUNNING" for r in records), "the running trial was not left to resume"
    assert len(records) < 6 or any(r.state != "COMPLETE" for r in records)
    assert "search_finished" not in json.loads((study_dir / "study.json").read_text())
    before = {r.key: results(study_dir / "trials" / r.key) for r in records if r.state == "COMPLETE"}

    resume(study_dir)

    assert_exact_budget(study_dir)
    for key, rows in before.items():
        assert results(study_dir / "trials" / key) == rows, f"finished trial {key} ran again"


def test_two_ctrl_c_during_the_retrain_leave_a_study_that_retrains_every_seed_once(interrupted, tmp_path):
    """The retrain phase stopped by a first Ctrl-C and, before the trials have stopped, a second one (the hard
    abort): exit 130, the retrain not marked finished, and a second `retrain` trains every seed exactly once."""
    study_dir = tmp_path / "tiny"
    shutil.copytree(interrupted[0], study_dir, symlinks=True)
    resume(study_dir)  # finish the search first
    retrain_dir = study_dir / "trials" / "retrain"

    def one_finished_and_one_running() -> bool:
        trials = list(retrain_dir.glob("*"))
        return any(state(t) == "COMPLETE" for t in trials) and any(
            state(t) == "RUNNING" and results(t) for t in trials)

    driver = start_driver(["retrain", str(study_dir), "--seeds", "2"], tmp_path / "retrain.log")
    try:
        wait_for(one_finished_and_one_running, 300, "a finished and a running retrain trial", driver=driver,
                 log=tmp_path / "retrain.log")
        os.killpg(driver.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(driver.pid, signal.SIGINT)
        code = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    output = (tmp_path / "retrain.log").read_text()
    assert code == 130, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("stopped by SIGINT; resume with:"), output[-2000:]
    assert "retrain_finished" not in json.loads((study_dir / "study.json").read_text())
    before = {t.name: results(t) for t in retrain_dir.glob("*") if state(t) == "COMPLETE"}
    # no pause: a killed driver's Ray workers may still train, and the next driver waits for them

    assert main(["retrain", str(study_dir), "--seeds", "2"]) == 0

    records = read_trials(open_study_dir(study_dir), "retrain")
    assert sorted((r.arm, r.seed, r.state) for r in records) == [
        (arm, seed, "COMPLETE") for arm in ("baseline", "kd") for seed in (1, 2)]
    for record in records:
        iterations = [row["iteration"] for row in results(study_dir / "trials" / record.key)]
        assert iterations == list(range(EVAL_EVERY, ITERS + 1, EVAL_EVERY)), (record.key, iterations)
    for name, rows in before.items():
        assert results(retrain_dir / name) == rows, f"finished retrain trial {name} ran again"


def test_a_copy_resumes_into_itself_and_leaves_the_original_unchanged(interrupted, tmp_path):
    """`cp -a` of an interrupted study, then the copy moved (`mv`) away from where it was copied to: it resumes at
    its new place, into itself, and the original stays byte for byte as it was."""
    original = interrupted[0]
    before = tree_digest(original)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    subprocess.run(["mv", str(copy), str(moved)], check=True)
    driver = start_driver(["resume", str(moved)], tmp_path / "resume.log")
    assert driver.wait(timeout=400) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert_exact_budget(moved)
    assert tree_digest(original) == before, "resuming a copy wrote into the original"
    assert not copy.exists(), "the resumed study wrote to the place it had been copied to"


def test_a_second_driver_is_refused_naming_the_first(interrupted, tmp_path, capsys):
    study_dir = tmp_path / "study"
    shutil.copytree(interrupted[0], study_dir, symlinks=True)
    first = start_driver(["resume", str(study_dir)], tmp_path / "first.log")
    try:
        wait_for(lambda: (study_dir / ".lock").is_file() and (study_dir / ".lock").read_text().strip(), 120,
                 "the first driver to hold the study", driver=first, log=tmp_path / "first.log")
        started = time.monotonic()
        assert main(["resume", str(study_dir)]) == 2
        err = capsys.readouterr().err
        assert time.monotonic() - started < 30, "the second driver waited instead of refusing"
        assert err.count("\n") == 1 and f"PID {first.pid}" in err and "launch.py resume" in err
        assert main(["status", str(study_dir)]) == 0  # readers never wait for the lock
        code = main(["export", str(study_dir), "--format", "csv"])  # mid-search: no retrain runs to tabulate yet
        assert code == 0 or (code == 2 and "has no retrain runs" in capsys.readouterr().err)
        assert main(["retrain", str(study_dir), "--seeds", "1"]) == 2
        assert f"PID {first.pid}" in capsys.readouterr().err
        assert first.wait(timeout=400) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert_exact_budget(study_dir)
    assert not (study_dir / ".lock").read_text().strip(), "the lock file still names a holder"


def test_sigterm_and_sigkill_then_resume_reruns_no_finished_trial(tmp_path, ray_local, given_teacher):
    raw = study_raw(given_teacher)
    raw["tracking"] = {"wandb": True, "project": "fakd-test"}
    spec = write_spec(tmp_path, raw)
    study_dir = tmp_path / "studies" / "tiny"
    finished_in_first_driver: set[str] = set()
    for signum, expected in ((signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)):
        args = ["sweep", str(spec), "--storage", str(tmp_path / "studies")] if signum == signal.SIGTERM else [
            "resume", str(study_dir)]
        driver = start_driver(args, tmp_path / f"driver-{signum}.log")
        try:
            done = sum(state(t) == "COMPLETE" for t in (study_dir / "trials" / "search").glob("*"))
            wait_for(lambda d=done: finished_and_running(study_dir) and sum(
                state(t) == "COMPLETE" for t in (study_dir / "trials" / "search").glob("*")) > d, 300,
                "another finished trial and a running one", driver=driver, log=tmp_path / f"driver-{signum}.log")
            os.kill(driver.pid, signum)
            assert driver.wait(timeout=120) == expected, (tmp_path / f"driver-{signum}.log").read_text()[-3000:]
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        if not finished_in_first_driver:
            finished_in_first_driver = {t.name for t in (study_dir / "trials" / "search").glob("*")
                                        if state(t) == "COMPLETE"}
    # no pause: a killed driver's Ray workers may still train, and the next driver waits for them
    before = {t.name: results(t) for t in (study_dir / "trials" / "search").glob("*") if state(t) == "COMPLETE"}
    interrupted = {t.name for t in (study_dir / "trials" / "search").glob("*") if state(t) == "RUNNING"}
    assert before and interrupted

    resume(study_dir)

    assert_exact_budget(study_dir)
    for name, rows in before.items():
        assert results(study_dir / "trials" / "search" / name) == rows, f"finished trial {name} ran again"
    # W&B (offline): one run per trial and driver that ran it, never a second one for a trial that had
    # finished before a stop, and each run file holds the trial's metrics
    runs: dict[str, list[Path]] = {}
    for run_dir in (study_dir / "wandb").glob("offline-run-*"):
        runs.setdefault(run_dir.name.split("-tiny-")[-1], []).append(run_dir)
    for record in read_trials(open_study_dir(study_dir), "search"):
        run_id = record.key.replace("/", "_")
        assert run_id in runs, (run_id, sorted(runs))
        if record.key.split("/")[-1] in finished_in_first_driver:
            assert len(runs[run_id]) == 1, f"finished trial {record.key} has {len(runs[run_id])} W&B runs"
        data = b"".join(p.read_bytes() for d in runs[run_id] for p in d.glob("*.wandb"))
        assert b"val_miou" in data and repr(record.last["val_miou"]).encode() in data
        assert all(key in data for key in (b"teacher_id", b"git_commit", b"seed", b"student", b"arm"))
