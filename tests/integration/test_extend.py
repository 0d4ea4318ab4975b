"""`launch.py extend`: arms added to a finished study get its teacher, protocol, budget and seeds, and leave its
trials untouched; in reproducible mode the extended study is the study that had every arm from the start; a plug-in
method and its FAKD arm join a study like the built-in ones."""

import copy
import csv
import io
import json

import pytest
from conftest import searched_spec, write_spec
from test_reproducible import outcome
from test_requests import digest, study_spec

from fakd import spec_yaml
from fakd.cli import main
from fakd.results import open_study_dir, read_trials
from fakd.spec import load_spec
from fakd.study import sweep

PLUGINS = "tests.plugins.methods"  # a user's own package of distillation methods


@pytest.mark.ray
@pytest.mark.slow
def test_an_extended_study_is_the_study_with_every_arm_from_the_start(tmp_path, ray_local, capsys):
    """[baseline, kd] extended with kd+fakd (and its FAKD strength searched) gives exactly the trials, early stops,
    confirmations, selections and retrain metrics of a study of [baseline, kd, kd+fakd]; the first study's trials
    and teacher are not touched, and the extension trains no teacher."""
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
    assert {t["arm"] for t in first[0] if t["phase"] == "confirm"} == {"baseline", "kd", "kd+fakd"}  # the default
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


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_extended_with_a_plug_in_method_and_its_fakd_arm(tmp_path, ray_local, capsys):
    """A finished [baseline] study grows by `mine` and `mine+fakd`, declared with `--set`: Ray's trial processes
    import the method, both arms are searched and retrained on the study's seeds, and the table compares them."""
    raw = searched_spec(["baseline"], num_samples=2, retrain_seeds=1)
    raw["train"].update(iters=4, eval_every=2)
    raw["loss"]["fakd"].update(samples=2)
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path / "studies").root
    assert main(["extend", str(study), "--arms", "mine+fakd,mine", "--set", f"methods.mine.loss={PLUGINS}:kd_like",
                 "--set", "methods.mine.params.temperature={choice: [1.0, 2.0]}",
                 "--set", "search.add_on=joint"]) == 0  # both arms in one search phase
    records = read_trials(open_study_dir(study))
    finished = {(r.arm, r.phase) for r in records if r.state == "COMPLETE"}
    assert {("mine", "search"), ("mine+fakd", "search"), ("mine", "retrain"), ("mine+fakd", "retrain")} <= finished
    assert {r.config.methods["mine"].params["temperature"] for r in records if r.arm == "mine"} <= {1.0, 2.0}
    capsys.readouterr()
    assert main(["export", str(study), "--format", "csv"]) == 0
    rows = {row["arm"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["mine"]["base_arm"] == "baseline" and rows["mine+fakd"]["base_arm"] == "mine"
    assert main(["extend", str(study), "--arms", "theirs"]) == 2
    assert "unknown arm 'theirs'" in capsys.readouterr().err
