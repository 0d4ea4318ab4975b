"""Reproducible studies on Ray: the same spec gives the same trials, early stops, selections and table,
whatever the concurrency and the timing, and a killed-and-resumed study ends identical."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import searched_spec, wait_for, write_spec

from fakd.cli import main
from fakd.study import resume, sweep

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]

def is_timing(column: str) -> bool:
    """Compute hours are measured wall time: the one thing a re-run cannot repeat."""
    return column.endswith("_hours")


def reproducible_spec(tmp_path: Path, max_concurrent: int, teacher: Path | None = None) -> Path:
    raw = searched_spec(["baseline", "kd"], num_samples=4, max_concurrent=max_concurrent, scheduler="asha",
                        reproducible=True, generation_size=2, retrain_seeds=1)
    raw["train"].update(iters=8, eval_every=2)  # 4 evaluations: rungs at 1 and 2
    raw["train"]["lr"] = {"loguniform": [0.0005, 0.2]}  # wide: trials differ, so halving has choices
    if teacher is not None:
        raw["teacher"]["checkpoint"] = str(teacher)
    return write_spec(tmp_path, raw)


def outcome(study_dir: Path, capsys) -> tuple[list, list]:
    """`status --json` and the csv table without its wall-time column."""
    capsys.readouterr()
    assert main(["status", str(study_dir), "--json"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert main(["export", str(study_dir), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    return trials, [{k: v for k, v in row.items() if not is_timing(k)} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_local, given_teacher):
    tmp_path = tmp_path_factory.mktemp("reference")
    return sweep(str(reproducible_spec(tmp_path, 2, given_teacher)), storage=tmp_path / "studies").root


def test_two_runs_with_other_concurrency_are_identical(reference, tmp_path, ray_local, capsys, given_teacher):
    again = sweep(str(reproducible_spec(tmp_path, 1, given_teacher)), storage=tmp_path / "studies").root
    first, second = outcome(reference, capsys), outcome(again, capsys)
    trials = first[0]
    assert {t["status"] for t in trials if t["phase"] == "search"} == {"COMPLETE", "PRUNED"}, trials
    assert [t["arm"] for t in trials].count("baseline") == [t["arm"] for t in trials].count("kd")
    assert first == second


def test_a_killed_and_resumed_run_is_identical(reference, tmp_path, ray_local, capsys, given_teacher):
    spec = reproducible_spec(tmp_path, 2, given_teacher)
    study_dir = tmp_path / "studies" / "tiny"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "sweep", str(spec), "--storage", str(tmp_path / "studies")],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)

    def some_search_results() -> bool:
        return sum(1 for _ in study_dir.glob("trials/search/*/results.jsonl")) >= 3

    try:
        wait_for(some_search_results, 300, "three search trials with results")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    resume(study_dir)
    assert outcome(study_dir, capsys) == outcome(reference, capsys)


def test_bad_values_of_the_new_keys(tmp_path, capsys):
    spec = reproducible_spec(tmp_path, 2)
    for override, key in (("search.reproducible=sometimes", "search.reproducible"),
                          ("search.generation_size=0", "search.generation_size"),
                          ("search.selection_repeats=-1", "search.selection_repeats"),
                          ("search.selection_repeats=two", "search.selection_repeats")):
        assert main(["sweep", str(spec), "--storage", str(tmp_path / "s"), "--set", override]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{spec}: {key}:" in err, err
    assert not (tmp_path / "s").exists()
