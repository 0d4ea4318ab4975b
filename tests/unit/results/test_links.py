"""No write follows a symbolic link out of a study: exports, teachers, tune and trial directories that are links
leading out (or an `exports` link at all) stop export, resume and retrain with one line, and nothing changes."""

import os
import shutil

import pytest
from test_report import make_study, tree_digest

from fakd.cli import main


def linked(tmp_path, name: str, target) -> tuple:
    study = make_study(tmp_path / "study", arms=["baseline", "kd"], seeds=(1, 2))
    place = study.root / name
    if place.exists():
        shutil.rmtree(place)
    place.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target(study) if callable(target) else target, place)
    return study, place


@pytest.mark.parametrize("target", [".", "outside"])
def test_an_exports_link_is_refused_and_the_study_is_untouched(tmp_path, capsys, target):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    study, place = linked(tmp_path, "exports", study_root if target == "." else outside)
    digest, before = tree_digest(study.root), sorted(outside.iterdir())
    for out, fmt in ((place / "study.json", "md"), (place / "report.html", "html")):
        assert main(["export", str(study.root), "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{place} is a symbolic link" in err and err.count("\n") == 1, err
    assert tree_digest(study.root) == digest and sorted(outside.iterdir()) == before


def study_root(study):
    return study.root


def test_a_trial_directory_linked_out_of_the_study_stops_resume_and_retrain(tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    study = make_study(tmp_path / "study", arms=["baseline", "kd"], seeds=(1, 2))
    trial = sorted((study.root / "trials" / "retrain").iterdir())[0]
    shutil.move(trial, outside)
    os.symlink(outside, trial)
    digest, inside = tree_digest(study.root), sorted(p.name for p in outside.iterdir())
    for argv in (["resume", str(study.root)], ["retrain", str(study.root), "--seeds", "3"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{trial} is a symbolic link that leads out of the study" in err and err.count("\n") == 1, err
    assert tree_digest(study.root) == digest and sorted(p.name for p in outside.iterdir()) == inside
