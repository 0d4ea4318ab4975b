"""Studies on a local Ray runtime: every arm searched with Optuna, status, faults, bad input."""

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import searched_spec, write_spec

from fakd.cli import main
from fakd.study import status, sweep

pytestmark = pytest.mark.ray


def test_sweep_searches_every_arm_with_equal_budget(searched_study, capsys):
    spec, study = searched_study
    tmp_path = spec.parent
    assert study.root == (tmp_path / "studies" / "tiny").resolve()
    records = [r for r in status(study.root) if r.phase == "search"]
    by_arm = {arm: [r for r in records if r.arm == arm] for arm in ("baseline", "kd", "kd+fakd")}
    assert {arm: len(rs) for arm, rs in by_arm.items()} == {"baseline": 2, "kd": 2, "kd+fakd": 2}
    assert all(r.status == "TERMINATED" and r.metric is not None for r in records)
    assert set(by_arm["baseline"][0].config) == {"train.lr"}
    assert set(by_arm["kd"][0].config) == {"train.lr", "loss.kd.temperature"}
    assert set(by_arm["kd+fakd"][0].config) == {"train.lr", "loss.kd.temperature", "loss.fakd.max_strength"}
    assert len(list((study.root / "teachers").glob("*/teacher.pt"))) == 1

    with sqlite3.connect(study.root / "optuna.db") as db:
        rows = db.execute("select s.study_name, count(*) from trials t join studies s using (study_id) "
                          "where t.state = 'COMPLETE' group by s.study_name").fetchall()
    assert dict(rows) == {"tiny/baseline": 2, "tiny/kd": 2, "tiny/kd+fakd": 2}

    capsys.readouterr()
    assert main(["status", str(study.root), "--json"]) == 0
    listed = [item for item in json.loads(capsys.readouterr().out) if item["phase"] == "search"]
    assert len(listed) == 6
    assert {"trial_id", "arm", "status", "config", "metric", "iterations"} <= set(listed[0])
    assert all(item["iterations"] == 4 for item in listed)

    assert main(["sweep", str(spec), "--storage", str(tmp_path / "studies")]) == 2
    assert "resume it with" in capsys.readouterr().err


def test_non_finite_loss_errors_the_trial_and_the_study_completes(tmp_path, ray_local, capsys):
    raw = searched_spec(num_samples=1, max_failures=0)
    raw["train"]["lr"] = 1.0e12
    raw["teacher"]["lr"] = 0.01
    raw["arms"] = ["baseline"]
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path)
    (record,) = status(study.root)
    assert record.status == "ERROR"
    out = capsys.readouterr().out
    assert "errored" in out and "NonFiniteLossError" in out
    assert (study.root / "study.json").is_file() and "search_finished" in json.loads(
        (study.root / "study.json").read_text())


def test_bad_input_creates_no_study_directory(tmp_path, capsys):
    spec = write_spec(tmp_path, searched_spec())
    storage = tmp_path / "studies"
    cases = {
        "train.epochs=3": "train.epochs",  # unknown key
        "train.batch_size=big": "train.batch_size",  # wrong type
        "loss.kd.temperature={choice: []}": "loss.kd.temperature",  # empty choice
        "train.lr={loguniform: [0.1, 0.001]}": "train.lr",  # lower > upper
        "student.backbone={choice: [test_resnet, nope_net]}": "student.backbone",  # unknown timm name
        "arms=[kd, kd+dkd]": "arms.1",  # unknown arm
        "train.iters=-5": "train.iters",  # negative iterations
        "resources.gpu=1": "resources.gpu",  # a GPU this machine does not have
        "resources.cpu=4096": "resources.cpu",  # more CPUs than the machine
        "data.name=voc": "data.root",  # a dataset without a root
        "search.num_samples=0": "search.num_samples",
        "arms=[]": "arms",
        "search.objectives=[params]": "search.objectives",
        "search.scheduler=pbt": "search.scheduler",
        "teacher.pretrained=/no/such/weights.pth": "teacher.pretrained",
        "loss.fakd.covariance=lowrank": "loss.fakd.covariance",
    }
    for override, key in cases.items():
        assert main(["sweep", str(spec), "--storage", str(storage), "--set", override]) == 2, override
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{spec}: {key}:" in err, (override, err)
    assert main(["sweep", str(spec), "--storage", str(storage), "--set", "data.name=camvid",
                 "--set", f"data.root={tmp_path / 'missing'}"]) == 2
    assert "data root does not exist" in capsys.readouterr().err
    assert not storage.exists()


def test_resume_refuses_a_directory_that_is_not_a_study(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a study directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_status_of_a_missing_directory(tmp_path, capsys):
    assert main(["status", str(Path(tmp_path, "nope"))]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_multi_objective_study_stores_its_pareto_front_and_retrains_each_student(tmp_path, ray_local, capsys):
    raw = searched_spec(num_samples=3, objectives=["miou", "params"], retrain_seeds=1, scheduler="none")
    raw["arms"] = ["kd"]
    raw["student"]["backbone"] = {"choice": ["test_efficientnet", "test_resnet"]}
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path)
    records = status(study.root)
    searched = {r.config["student.backbone"] for r in records if r.phase == "search"}
    retrained = {r.config["student.backbone"] for r in records if r.phase == "retrain"}
    assert retrained == searched
    front = json.loads((study.root / "pareto.json").read_text())
    assert front and all({"trial_id", "val_miou", "params", "config"} <= set(p) for p in front)
    params = [p["params"] for p in front]
    mious = [p["val_miou"] for p in front]
    assert params == sorted(params) and mious == sorted(mious), "a front sorted by size must gain mIoU"
    capsys.readouterr()
    assert main(["export", str(study.root), "--format", "csv"]) == 0
    students = {line.split(",")[0] for line in capsys.readouterr().out.splitlines()[2:] if line}
    assert students == searched
