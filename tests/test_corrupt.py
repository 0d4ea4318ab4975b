"""Corrupt study files: one line naming the file and what to do, exit 2, and nothing in the study changes."""

import hashlib
import shutil
from pathlib import Path

import pytest

from fakd.cli import main

pytestmark = pytest.mark.ray


def digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return sha.hexdigest()


CORRUPTIONS = {
    "study.json": b'{"format": 2, "name": ',
    "spec.yaml": b"name: tiny\nteacher: [unclosed\n",
    "optuna.db": b"SQLite format 3\x00" + b"\xff" * 2000,
    "trials/search/kd-000/trial.json": b"\x00\x01 not json",
}
# which commands read the file (status needs neither the spec nor Optuna)
READERS = {
    "study.json": ("status", "export", "resume", "retrain"),
    "spec.yaml": ("export", "resume", "retrain"),
    "optuna.db": ("resume", "retrain"),
    "trials/search/kd-000/trial.json": ("status", "export", "resume", "retrain"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corrupt_study_file_is_named_and_nothing_changes(name, searched_study, tmp_path, ray_local, capsys):
    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    (copy / name).write_bytes(CORRUPTIONS[name])
    before = digest(copy)
    for command in READERS[name]:
        args = {"status": ["status", str(copy)], "export": ["export", str(copy), "--format", "csv"],
                "resume": ["resume", str(copy)], "retrain": ["retrain", str(copy), "--seeds", "3"]}[command]
        assert main(args) == 2, (name, command)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(copy / name) in err, (name, command, err)
        assert digest(copy) == before, f"{command} changed the study after finding {name} corrupt"
