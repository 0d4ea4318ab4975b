"""Kill the sweep driver with SIGKILL mid-study, then `launch.py resume` finishes the study."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import searched_spec, wait_for, write_spec

from fakd.study import resume, status

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
ITERS = 16


def is_finished(rows: list[dict]) -> bool:
    return bool(rows) and rows[-1]["iteration"] == ITERS


def results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_sigkill_driver_then_resume_finishes_without_rerunning(tmp_path, ray_local):
    raw = searched_spec(num_samples=3, max_concurrent=1, scheduler="none")
    raw["arms"] = ["baseline", "kd"]
    raw["tracking"] = {"wandb": True, "project": "fakd-test"}
    raw["train"].update(iters=ITERS, eval_every=2)
    spec = write_spec(tmp_path, raw)
    study_dir = tmp_path / "studies" / "tiny"
    experiment = study_dir / "tune" / "search-baseline"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "sweep", str(spec), "--storage", str(tmp_path / "studies")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def finished_and_running() -> bool:
        trials = sorted(experiment.glob("run_trial_*"))
        done = [t for t in trials if is_finished(results(t))]
        running = [t for t in trials if t not in done and len(results(t)) >= 1]
        return len(done) >= 1 and len(running) >= 1

    try:
        wait_for(finished_and_running, 240, "one finished and one checkpointed running trial")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        log.close()
    time.sleep(3)  # let Ray notice the dead driver
    before = {t.name: results(t) for t in experiment.glob("run_trial_*")}
    finished = {name for name, rs in before.items() if is_finished(rs)}
    interrupted = {name for name, rs in before.items() if rs and name not in finished}
    assert finished and interrupted

    resume(study_dir)

    records = status(study_dir)
    assert sorted((r.arm, r.status) for r in records) == [("baseline", "TERMINATED")] * 3 + [("kd", "TERMINATED")] * 3
    after = {t.name: results(t) for t in experiment.glob("run_trial_*")}
    for name in finished:
        assert after[name] == before[name], f"finished trial {name} ran again"
    for name in interrupted:
        iterations = [r["iteration"] for r in after[name]]
        assert iterations == sorted(set(iterations)), f"{name} restarted from scratch: {iterations}"
        assert iterations[0] == 2 and iterations[-1] == ITERS
    # W&B (offline): one run per trial, never a second one for a trial that had finished before the kill,
    # and each run file holds the trial's metrics
    runs: dict[str, list[Path]] = {}
    for run_dir in (study_dir / "wandb").glob("offline-run-*"):
        runs.setdefault(run_dir.name.split("-tiny-")[-1], []).append(run_dir)
    trial_ids = {r.trial_id for r in records}
    assert trial_ids <= set(runs)
    for name in finished:
        trial_id = next(t for t in trial_ids if t in name)
        assert len(runs[trial_id]) == 1, f"finished trial {trial_id} has {len(runs[trial_id])} W&B runs"
    for name, rows in after.items():
        trial_id = next(t for t in trial_ids if t in name)
        data = b"".join(p.read_bytes() for d in runs[trial_id] for p in d.glob("*.wandb"))
        assert b"val_miou" in data and repr(rows[-1]["val_miou"]).encode() in data
        assert all(key in data for key in (b"teacher_id", b"git_commit", b"seed", b"student", b"arm"))
    with sqlite3.connect(study_dir / "optuna.db") as db:
        counts = dict(db.execute("select s.study_name, count(*) from trials t join studies s using (study_id) "
                                 "where t.state = 'COMPLETE' group by s.study_name").fetchall())
    assert counts == {"tiny/baseline": 3, "tiny/kd": 3}
