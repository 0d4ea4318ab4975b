"""`launch.py status`: one vocabulary of states in every view, and a closed pipe ends it quietly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import make_study

from fakd.cli import main
from fakd.results import read_trials
from fakd.results.records import write_trial
from fakd.results.status import STOPPED, format_status, shown_state, status_json

ROOT = Path(__file__).resolve().parents[3]


def test_a_trial_whose_driver_died_is_stopped_in_every_view(tmp_path, capsys):
    study = make_study(tmp_path / "died", arms=["baseline", "kd"], seeds=(1,))
    record = sorted(read_trials(study), key=lambda r: r.key)[-1]
    record.state = "RUNNING"
    write_trial(study, record)
    records = read_trials(study)
    table = format_status(records, None)
    line = next(row for row in table.splitlines() if row.startswith(record.key))
    assert STOPPED in line and "RUNNING" not in table
    assert f"{record.phase} {STOPPED}" in table.splitlines()[-2]
    assert main(["status", str(study.root), "--json"]) == 0
    shown = {item["trial"]: item["status"] for item in json.loads(capsys.readouterr().out)}
    assert shown[record.key] == STOPPED
    assert {shown_state(r, "driver pid 1 on host") for r in records if r.key == record.key} == {"RUNNING"}
    assert {i["status"] for i in status_json(records, "a driver")} >= {"RUNNING"}


@pytest.mark.driver
def test_a_closed_pipe_ends_status_quietly(tmp_path):
    study = make_study(tmp_path / "piped", seeds=tuple(range(1, 40)))  # ~150 KB of JSON: more than a pipe holds
    command = (f"{sys.executable} {ROOT / 'launch.py'} status {study.root} --json | head -c 10; "
               "exit ${PIPESTATUS[0]}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stderr == "" and result.returncode in (0, 141), (result.returncode, result.stderr[-2000:])
