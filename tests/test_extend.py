"""`launch.py extend`: arms added to a finished study get its teacher, protocol, budget and seeds, and leave its
trials untouched; in reproducible mode the extended study is the study that had every arm from the start."""

import copy
import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from conftest import searched_spec, write_spec
from test_reproducible import outcome

from fakd import spec_yaml
from fakd.cli import main
from fakd.results import StudyDir, TrialRecord, open_study_dir, read_trials
from fakd.results.layout import FORMAT
from fakd.results.records import write_trial
from fakd.spec import load_spec
from fakd.study import sweep


def digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for root in paths:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            sha.update(str(path).encode() + path.read_bytes())
    return sha.hexdigest()


def study_spec(arms: list[str]) -> dict:
    """A reproducible tiny study; `search.add_on` left to its default, as a user would."""
    raw = searched_spec(arms, num_samples=2, scheduler="asha", reproducible=True, generation_size=2,
                        retrain_seeds=1)
    raw["train"].update(iters=4, eval_every=2)
    del raw["search"]["add_on"]
    return raw


def fake_study(tmp_path: Path, arms: list[str]) -> Path:
    """A study directory as `sweep` leaves it before any trial (no Ray needed to refuse an extension of it)."""
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "study.json").write_text(json.dumps({"format": FORMAT, "name": "tiny", "optuna_prefix": "tiny"}))
    raw = study_spec(arms)
    raw["search"]["add_on"] = "joint"
    write_spec(root, raw)
    return root


@pytest.mark.parametrize(("arms", "args", "key", "says"), [
    (["baseline", "kd"], ["--arms", "kd2"], "--arms", "unknown arm 'kd2'"),
    (["baseline", "kd"], ["--arms", "kd"], "--arms", "kd is an arm of the study already"),
    (["baseline", "kd"], ["--arms", " , "], "--arms", "names no arm"),
    (["baseline"], ["--arms", "kd+fakd"], "--arms", "its base arm kd, which the study does not have"),
    (["baseline", "kd"], ["--arms", "cwd", "--set", "search.num_samples=5"], "search.num_samples",
     "a setting of the study's arms (baseline, kd)"),
    (["baseline", "kd"], ["--arms", "cwd", "--set", "train.lr=0.1"], "train.lr", "a setting of the study's arms"),
    (["baseline", "kd"], ["--arms", "cwd", "--set", "teacher.iters=8"], "teacher.iters",
     "a setting of the study's arms"),
    (["baseline", "kd"], ["--arms", "cwd", "--set", "loss.kd.temperature=3"], "loss.kd.temperature",
     "a setting of the study's arms (kd)"),
    (["baseline", "kd"], ["--arms", "cwd", "--set", "loss.fakd.max_strength=2"], "loss.fakd.max_strength",
     "changes nothing in the new arms (cwd)"),
    (["baseline", "kd", "kd+fakd"], ["--arms", "cwd", "--set", "search.add_on=inherit"], "search.add_on",
     "decided how the study's add-on arms were searched"),
    (["baseline", "kd"], ["--arms", "cwd", "--set", "loss.cwd.temperature=-1"], "loss.cwd.temperature", ""),
])
def test_an_extension_that_would_break_the_equal_budget_is_one_line_and_changes_nothing(tmp_path, capsys, arms,
                                                                                         args, key, says):
    root = fake_study(tmp_path, arms)
    before = digest([root])
    assert main(["extend", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and says in err, err
    assert digest([root]) == before


def test_extending_a_directory_that_is_not_a_study_is_refused(tmp_path, capsys):
    assert main(["extend", str(tmp_path), "--arms", "kd"]) == 2
    assert "is not a study directory" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_an_extended_study_is_the_study_with_every_arm_from_the_start(tmp_path, ray_local, capsys):
    """[baseline, kd] extended with kd+fakd (and its FAKD strength searched) gives exactly the trials, early stops,
    selections and retrain metrics of a study of [baseline, kd, kd+fakd]; the first study's trials and teacher are
    not touched, and the extension trains no teacher."""
    grown = tmp_path / "grown"
    grown.mkdir()
    study = sweep(str(write_spec(grown, study_spec(["baseline", "kd"]))), storage=grown / "studies").root
    assert load_spec(study / "spec.yaml", study=True).settings.search.add_on == "joint"  # no add-on arm yet
    kept = sorted(study.glob("trials/*/*")) + sorted(study.glob("teachers/*"))
    before = digest(kept)
    capsys.readouterr()
    assert main(["extend", str(study), "--arms", "kd+fakd", "--set",
                 "loss.fakd.max_strength={uniform: [0.5, 2.0]}"]) == 0
    log = capsys.readouterr()
    assert digest(kept) == before
    assert "extending study" in log.out and " ready (" not in log.out, log.out  # the teacher was not made again
    assert f"python launch.py export {study}" in log.out

    whole = tmp_path / "whole"
    whole.mkdir()
    reference = sweep(str(write_spec(whole, study_spec(["baseline", "kd", "kd+fakd"]))),
                      storage=whole / "studies").root
    extended, fresh = load_spec(study / "spec.yaml", study=True), load_spec(reference / "spec.yaml", study=True)
    assert extended.settings == fresh.settings and extended.space == fresh.space  # add_on: inherit in both
    first, second = outcome(study, capsys), outcome(reference, capsys)
    assert {t["arm"] for t in first[0]} == {"baseline", "kd", "kd+fakd"}
    assert first == second
    meta = json.loads((study / "study.json").read_text())
    assert [e["arms"] for e in meta["extensions"]] == [["kd+fakd"]]
    assert set(meta["plan"]["arms"]) == {"baseline", "kd", "kd+fakd"}
    assert main(["extend", str(study), "--arms", "kd+fakd"]) == 2  # once added, an arm is the study's
    assert spec_yaml.load((study / "spec.yaml").read_text())["arms"] == ["baseline", "kd", "kd+fakd"]
    assert copy.deepcopy(first) == outcome(study, capsys)  # the refusal changed nothing


@pytest.mark.ray
@pytest.mark.slow
def test_an_arm_added_to_a_sequential_study_starts_with_the_first_round_against_its_base(tmp_path, ray_local,
                                                                                          capsys):
    raw = study_spec(["baseline", "kd"])
    raw["search"]["decide"] = {"margin": 0.01, "alpha": 0.05, "max_seeds": 3, "round": 2}
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path / "studies").root
    rounds = json.loads((study / "study.json").read_text())["decide_rounds"]
    kept = sorted(study.glob("trials/*/*"))
    before = digest(kept)
    assert main(["extend", str(study), "--arms", "kd+fakd", "--set", "loss.fakd.max_strength=1.5"]) == 0
    assert digest(kept) == before
    meta = json.loads((study / "study.json").read_text())
    added = meta["decide_rounds"][len(rounds)]
    assert meta["decide_rounds"][:len(rounds)] == rounds
    assert added == {"budget": "equal-iters", "seeds": 2, "arms": ["kd", "kd+fakd"]}  # the arm and its base
    records = read_trials(open_study_dir(study))
    fakd_seeds = sorted(r.seed for r in records if r.phase == "retrain" and r.arm == "kd+fakd")
    kd_seeds = sorted(r.seed for r in records if r.phase == "retrain" and r.arm == "kd")
    assert fakd_seeds[:2] == [1, 2] and set(fakd_seeds) <= set(kd_seeds)  # paired with kd, seed for seed
    capsys.readouterr()
    assert main(["export", str(study), "--format", "csv"]) == 0
    rows = {row["arm"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["kd+fakd"]["base_arm"] == "kd" and rows["kd+fakd"]["decision"] in ("better", "worse", "equivalent",
                                                                                      "undecided")


def test_a_study_with_unfinished_trials_is_finished_first(tmp_path, capsys):
    root = fake_study(tmp_path, ["baseline", "kd"])
    write_trial(StudyDir(root), TrialRecord(key="search/kd-000", phase="search", arm="kd", index=0, values={}, run={},
                                            student="s", seed=0, state="RUNNING"))
    before = digest([root])
    assert main(["extend", str(root), "--arms", "cwd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unfinished trials (search/kd-000)" in err and "launch.py resume" in err, err
    assert digest([root]) == before
