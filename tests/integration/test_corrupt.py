"""Corrupt study files: one line naming the file and what to do, exit 2, and nothing in the study changes."""

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fakd.cli import main

pytestmark = pytest.mark.ray

ALL = ("status", "export", "resume", "retrain")
DRIVERS = ("resume", "retrain")  # status and export need neither Optuna, the teacher nor checkpoints


def digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return sha.hexdigest()


def overwrite(name: str, data: bytes) -> Callable[[Path], Path]:
    def damage(study: Path) -> Path:
        (study / name).write_bytes(data)
        return study / name
    return damage


def delete(name: str) -> Callable[[Path], Path]:
    def damage(study: Path) -> Path:
        (study / name).unlink()
        return study / name
    return damage


def edit_json(name: str, change: Callable[[dict], dict]) -> Callable[[Path], Path]:
    def damage(study: Path) -> Path:
        (study / name).write_text(json.dumps(change(json.loads((study / name).read_text()))))
        return study / name
    return damage


def broken_teacher(study: Path) -> Path:
    (path,) = study.glob("teachers/*/teacher.pt")
    path.write_bytes(b"PK\x03\x04 not a whole zip")
    return path


def interrupted_trial_with_broken_checkpoint(study: Path) -> Path:
    """A retrain trial as a stopped driver leaves it (RUNNING, its checkpoint kept), its checkpoint damaged."""
    directory = sorted(study.glob("trials/retrain/*"))[0]
    record = json.loads((directory / "trial.json").read_text())
    (directory / "trial.json").write_text(json.dumps({**record, "state": "RUNNING", "finished": None}))
    (state,) = directory.glob("checkpoints/iter_*/state.pt")
    state.write_bytes(state.read_bytes()[:200])
    return state


CORRUPTIONS = {  # name: (damage, the commands that read what it damages)
    "study.json": (overwrite("study.json", b'{"format": 2, "name": '), ALL),
    "study.json without optuna_prefix": (edit_json("study.json", lambda m: {k: v for k, v in m.items()
                                                                             if k != "optuna_prefix"}), DRIVERS),
    "spec.yaml": (overwrite("spec.yaml", b"name: tiny\nteacher: [unclosed\n"), ("export", "resume", "retrain")),
    "optuna.db": (overwrite("optuna.db", b"SQLite format 3\x00" + b"\xff" * 2000), DRIVERS),
    "optuna.db empty": (overwrite("optuna.db", b""), DRIVERS),
    "optuna.db missing": (delete("optuna.db"), DRIVERS),
    "trial.json": (overwrite("trials/search/kd-000/trial.json", b"\x00\x01 not json"), ALL),
    "trial.json not an object": (overwrite("trials/search/kd-000/trial.json", b"[]"), ALL),
    "trial.json naming another directory": (edit_json("trials/search/kd-000/trial.json",
                                                      lambda r: {**r, "key": "search/../../../outside"}), ALL),
    "results without trial.json": (delete("trials/search/kd-001/trial.json"), ALL),
    "teacher.pt": (broken_teacher, DRIVERS),
    "trial checkpoint": (interrupted_trial_with_broken_checkpoint, DRIVERS),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corrupt_study_file_is_named_and_nothing_changes(name, searched_study, tmp_path, ray_local, capsys):
    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    damage, readers = CORRUPTIONS[name]
    damaged = damage(copy)
    named = damaged.parent if name == "results without trial.json" else damaged
    before = digest(copy)
    for command in readers:
        args = {"status": ["status", str(copy)], "export": ["export", str(copy), "--format", "csv"],
                "resume": ["resume", str(copy)], "retrain": ["retrain", str(copy), "--seeds", "3"]}[command]
        assert main(args) == 2, (name, command)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(named) in err, (name, command, err)
        assert digest(copy) == before, f"{command} changed the study after finding {name} corrupt"
    assert not (tmp_path / "outside").exists()
