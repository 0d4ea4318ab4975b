"""Studies on a local Ray runtime: every arm searched in one Tune experiment with equal budgets, status,
diverging trials, storages, moved studies, bad input."""

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import searched_spec, write_spec

from fakd.cli import main
from fakd.results import open_study_dir, read_trials
from fakd.study import sweep

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def optuna_counts(db: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("select s.study_name, t.state, count(*) from trials t join studies s "
                                  "using (study_id) group by s.study_name, t.state").fetchall()
    return {(name, state): count for name, state, count in rows}


def test_sweep_searches_every_arm_in_one_experiment_with_equal_budget(searched_study, capsys):
    spec, study = searched_study
    assert study.root == (spec.parent / "studies" / "tiny").resolve()
    records = read_trials(study, "search")
    assert sorted(r.arm for r in records) == ["baseline"] * 2 + ["kd"] * 2 + ["kd+fakd"] * 2
    assert all(r.state in ("COMPLETE", "PRUNED") for r in records)
    by_arm = {r.arm: r for r in records}
    assert set(by_arm["baseline"].values) == {"train.lr"}
    assert set(by_arm["kd"].values) == {"train.lr", "loss.kd.temperature"}
    assert set(by_arm["kd+fakd"].values) == {"train.lr", "loss.kd.temperature", "loss.fakd.max_strength"}
    assert len(list((study.root / "teachers").glob("*/teacher.pt"))) == 1

    # one Tune experiment held the whole search, and it ran each study trial (no more, no fewer)
    experiments = sorted(p.name for p in (study.root / "tune").iterdir())
    assert experiments == ["confirm-1", "retrain-1", "search-1"]
    tune_trials = {p.name.rsplit("-", 1)[0] for p in (study.root / "tune" / "search-1").iterdir() if p.is_dir()}
    assert tune_trials == {r.key.split("/")[-1] for r in records}

    # the default confirmation: every finished search trial (2 at most per arm) again with 2 fresh seeds, held out,
    # and each arm retrains the one with the best confirmed mean
    confirmed = read_trials(study, "confirm")
    finished = [r.key for r in records if r.final_miou is not None]
    assert sorted(r.source for r in confirmed) == sorted(finished * 2)
    assert all(r.state == "COMPLETE" and r.config.split == "holdout" for r in confirmed)
    means = {key: statistics.fmean(r.final_miou for r in confirmed if r.source == key) for key in finished}
    arm_of = {r.key: r.arm for r in records}
    retrained = {r.arm: r.source for r in read_trials(study, "retrain")}
    assert set(retrained) == {"baseline", "kd", "kd+fakd"}
    for arm, source in retrained.items():
        assert means[source] == max(mean for key, mean in means.items() if arm_of[key] == arm)

    counts = optuna_counts(study.root / "optuna.db")
    for arm in ("baseline", "kd", "kd+fakd"):
        mine = [r for r in records if r.arm == arm]
        assert sum(n for (name, _), n in counts.items() if name == f"tiny/{arm}") == 2
        assert counts.get((f"tiny/{arm}", "COMPLETE"), 0) == sum(r.state == "COMPLETE" for r in mine)
        assert counts.get((f"tiny/{arm}", "PRUNED"), 0) == sum(r.state == "PRUNED" for r in mine)

    capsys.readouterr()
    assert main(["status", str(study.root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sum(item["phase"] == "confirm" for item in listed) == len(confirmed)
    listed = [item for item in listed if item["phase"] == "search"]
    assert len(listed) == 6
    assert {"trial", "arm", "status", "config", "metric", "iterations"} <= set(listed[0])
    assert all(item["iterations"] == 4 for item in listed if item["status"] == "COMPLETE")

    assert main(["sweep", str(spec), "--storage", str(spec.parent / "studies")]) == 2
    assert "resume it with" in capsys.readouterr().err


def test_a_moved_study_is_read_without_its_data_its_spec_or_ray(searched_study, tmp_path):
    """status, status --json and export (all formats) from a copy at another path, the original spec gone,
    in a fresh process that never imports Ray; the copy is unchanged."""
    _, study = searched_study
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(study.root, moved)
    meta = json.loads((moved / "study.json").read_text())
    (moved / "study.json").write_text(json.dumps({**meta, "spec_source": "/gone/spec.yaml"}))  # never read
    before = tree_digest(moved)
    out = tmp_path / "exports"
    script = (
        "import sys\n"
        "from fakd.cli import main\n"
        f"codes = [main(['status', {str(moved)!r}]), main(['status', {str(moved)!r}, '--json'])]\n"
        f"codes += [main(['export', {str(moved)!r}, '--format', f, '--out', {str(out)!r} + '/t.' + f])"
        " for f in ('md', 'csv', 'latex', 'html')]\n"
        "assert codes == [0] * 6, codes\n"
        "assert 'ray' not in sys.modules, 'status/export imported Ray'\n"
        "assert 'torch' not in sys.modules, 'status/export imported torch'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kd+fakd" in (out / "t.md").read_text()
    assert tree_digest(moved) == before, "reading a study changed it"


def camvid_study_spec(tmp_path: Path, **search) -> tuple[Path, Path]:
    """A CamVid tree in the official layout under `tmp_path/camvid` and a baseline study spec of it (2 iterations)."""
    from test_datasets import make_camvid

    data = tmp_path / "camvid"
    make_camvid(data)
    raw = searched_spec(["baseline"], max_concurrent=1, scheduler="none", **search)
    raw["data"] = {"name": "camvid", "root": str(data), "image_size": 16}
    raw["teacher"]["iters"] = 2
    raw["train"].update(iters=2, eval_every=2)
    return data, write_spec(tmp_path, raw, "camvid.yaml")


def test_a_moved_study_of_real_data_reads_with_its_data_root_and_spec_gone(tmp_path, ray_local):
    """A study of a dataset on disk (a CamVid tree), moved; its data root and its spec file deleted: status and
    export still work in a fresh process without Ray, and change nothing."""
    data, spec = camvid_study_spec(tmp_path, num_samples=1, retrain_seeds=1)
    study = sweep(str(spec), storage=tmp_path / "studies")
    moved = tmp_path / "laptop" / "camvid-study"
    moved.parent.mkdir()
    shutil.move(str(study.root), moved)
    shutil.rmtree(data)
    spec.unlink()
    before = tree_digest(moved)
    script = (
        "import sys\n"
        "from fakd.cli import main\n"
        f"codes = [main(['status', {str(moved)!r}]), main(['status', {str(moved)!r}, '--json'])]\n"
        f"codes += [main(['export', {str(moved)!r}, '--format', f]) for f in ('md', 'csv', 'latex', 'html')]\n"
        "assert codes == [0] * 6, codes\n"
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "baseline" in result.stdout and "sky" in result.stdout.lower()  # CamVid's class names, from study.json
    assert tree_digest(moved) == before, "reading a study changed it"


def test_a_damaged_data_file_stops_the_study_until_it_is_fixed(tmp_path, ray_local, capsys):
    """A label file that cannot be read stops the search with one line naming it (no trial is failed for it, no
    retry spent on it); once the file is restored, `resume` finishes exactly the budget."""
    from fakd.spec import load_spec
    from fakd.train import ensure_teacher

    data, spec = camvid_study_spec(tmp_path, num_samples=2, max_failures=2)
    teacher = ensure_teacher(load_spec(spec).run_config("baseline"), tmp_path / "teachers", progress=False)
    labels = sorted((data / "trainannot").glob("*.png"))
    intact = {path: path.read_bytes() for path in labels}
    for path in labels:
        path.write_bytes(intact[path][: len(intact[path]) // 2])
    assert main(["sweep", str(spec), "--storage", str(tmp_path / "studies"), "--teacher", str(teacher.path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read label file" in err and str(data / "trainannot") in err, err
    assert "fix it, then resume with" in err
    study_dir = tmp_path / "studies" / "tiny"
    records = read_trials(open_study_dir(study_dir))
    assert records and all(r.state in ("PENDING", "RUNNING") for r in records), [(r.key, r.state) for r in records]
    for path, content in intact.items():
        path.write_bytes(content)
    assert main(["resume", str(study_dir)]) == 0
    assert [r.state for r in read_trials(open_study_dir(study_dir))] == ["COMPLETE", "COMPLETE"]


def tree_digest(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_a_diverging_trial_fails_once_and_its_arm_is_named(tmp_path, ray_local, capsys):
    raw = searched_spec(["baseline"], num_samples=1, max_failures=2, retrain_seeds=1)
    raw["train"]["lr"] = 1.0e12
    raw["teacher"]["lr"] = 0.01
    spec = write_spec(tmp_path, raw)
    assert main(["sweep", str(spec), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "arms.baseline: no search trial of baseline finished" in err
    assert "1 diverged" in err
    (record,) = read_trials(open_study_dir(tmp_path / "tiny"))
    assert (record.state, record.reason) == ("FAILED", "diverged") and "non-finite loss" in record.error
    # the same seed would diverge again: it was not retried (one Tune trial, one start)
    runs = [p for p in (tmp_path / "tiny" / "tune" / "search-1").iterdir() if p.is_dir()]
    rows = [json.loads(line) for line in (runs[0] / "result.json").read_text().splitlines()]
    assert len(runs) == 1 and [row["iteration"] for row in rows] == [r["iteration"] for r in record.results]
    assert rows[-1]["diverged"] is True and [row.get("diverged") for row in rows[:-1]] == [None] * (len(rows) - 1)
    assert optuna_counts(tmp_path / "tiny" / "optuna.db") == {("tiny/baseline", "FAIL"): 1}
    assert main(["status", str(tmp_path / "tiny")]) == 0 and "diverged" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "tiny"), "--format", "csv"]) == 2  # no retrain runs: nothing to tabulate
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"launch.py retrain {tmp_path / 'tiny'} --seeds N" in err


def test_bad_input_creates_nothing(tmp_path, capsys):
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
        "search.sampler=grid": "search.sampler",
        "search.startup_trials=-1": "search.startup_trials",
        "search.metric=not_a_metric": "search.metric",
        "search.storage=nosuchdb://x/y": "search.storage",
        "search.storage=postgresql+psycopg://nobody@127.0.0.1:9/none": "search.storage",  # unreachable server
        "search.generation_size=2": "search.generation_size",  # no effect without reproducible
        "search.reproducible=maybe": "search.reproducible",
        "search.selection_repeats=0": "search.selection_repeats",
        "teacher.pretrained=/no/such/weights.pth": "teacher.pretrained",
        "teacher.checkpoint=/no/such/teacher.pt": "teacher.checkpoint",
        "loss.fakd.covariance=lowrank": "loss.fakd.covariance",
        "student.head=unet": "student.head",
        "arms=[baseline]": "loss.kd.temperature",  # searched, but no arm uses it
    }
    for override, key in cases.items():
        assert main(["sweep", str(spec), "--storage", str(storage), "--set", override]) == 2, override
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{spec}: {key}:" in err, (override, err)
    no_baseline = ["--set", "arms=[kd, kd+fakd]", "--set", "search.retrain_budget=equal-time"]
    assert main(["sweep", str(spec), "--storage", str(storage), *no_baseline]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{spec}: search.retrain_budget: equal-time gives every arm" in err, err
    label_row = ["--set", "arms=[kd+fakd, cwd+fakd]", "--set", "loss.fakd.form=label_row"]
    assert main(["sweep", str(spec), "--storage", str(storage), *label_row]) == 2
    assert "loss.fakd.form: label_row has no effect on the cwd+fakd arm" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--storage", str(storage), "--set", "data.name=camvid",
                 "--set", f"data.root={tmp_path / 'missing'}"]) == 2
    assert "data root does not exist" in capsys.readouterr().err
    for name in ("../escape", str(tmp_path / "abs"), ".hidden", "a/b"):
        assert main(["sweep", str(spec), "--storage", str(storage), "--name", name]) == 2
        assert "--name:" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for bad in (afile, afile / "below"):
        assert main(["sweep", str(spec), "--storage", str(bad)]) == 2
        assert "--storage:" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert main(["sweep", str(spec), "--storage", str(storage), "--teacher", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert str(garbage) in err and err.count("\n") == 1
    assert not storage.exists() and not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()
    assert afile.read_text() == "keep"


def test_no_new_study_or_run_inside_a_study(searched_study, tmp_path, capsys):
    """`sweep --storage` and `train --out` inside an existing study are refused: only its driver writes there."""
    spec, study = searched_study
    before = tree_digest(study.root)
    assert main(["sweep", str(spec), "--storage", str(study.root / "trials")]) == 2
    assert "--storage:" in capsys.readouterr().err
    assert main(["train", str(spec), "--out", str(study.root / "exports" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out: {study.root / 'exports' / 'run'} is inside the study" in err, err
    assert tree_digest(study.root) == before


def test_a_sweep_stopped_before_it_created_its_study_can_be_run_again(tmp_path, ray_local):
    """What a sweep stopped between making the directory and writing study.json leaves (the lock, the spec) does
    not block the next sweep of that name."""
    spec = write_spec(tmp_path, searched_spec(["baseline"], num_samples=1, max_concurrent=1, scheduler="none"))
    half = tmp_path / "studies" / "tiny"
    half.mkdir(parents=True)
    (half / ".lock").write_text("")
    (half / "spec.yaml").write_text("name: tiny\n")
    study = sweep(str(spec), storage=tmp_path / "studies")
    assert [r.state for r in read_trials(open_study_dir(study.root))] == ["COMPLETE"]
    assert "arms:" in (half / "spec.yaml").read_text(), "the leftover spec was replaced by the study's"


def test_resume_refuses_a_directory_that_is_not_a_study(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a study directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_status_of_a_missing_directory(tmp_path, capsys):
    assert main(["status", str(Path(tmp_path, "nope"))]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_multi_objective_study_stores_its_pareto_front_and_retrains_each_student(tmp_path, ray_local, capsys):
    raw = searched_spec(["kd"], num_samples=3, objectives=["miou", "params"], retrain_seeds=1, scheduler="none",
                        storage="journal")
    raw["student"]["backbone"] = {"choice": ["test_efficientnet", "test_resnet"]}
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path)
    records = read_trials(study)
    searched = {r.student for r in records if r.phase == "search" and r.state == "COMPLETE"}
    retrained = {r.student for r in records if r.phase == "retrain"}
    assert retrained == searched
    front = json.loads((study.root / "pareto.json").read_text())
    assert front and all({"trial", "val_miou", "params", "config"} <= set(p) for p in front)
    params = [p["params"] for p in front]
    mious = [p["val_miou"] for p in front]
    assert params == sorted(params) and mious == sorted(mious), "a front sorted by size must gain mIoU"
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(study.root / "optuna.journal")))
    (trials_study,) = [s for s in optuna.get_all_study_summaries(journal)]
    assert trials_study.study_name == "tiny/kd" and trials_study.n_trials == 3
    capsys.readouterr()
    assert main(["export", str(study.root), "--format", "csv"]) == 0
    students = {line.split(",")[0] for line in capsys.readouterr().out.splitlines()[2:] if line}
    assert students == searched


@pytest.mark.postgres
def test_a_study_on_postgresql(tmp_path, ray_local, postgres_url, capsys):
    raw = searched_spec(["baseline", "kd"], num_samples=2, scheduler="none", storage=postgres_url)
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path)
    prefix = json.loads((study.root / "study.json").read_text())["optuna_prefix"]
    assert prefix.startswith("tiny-")  # a shared database holds other studies: names of its own
    storage = optuna.storages.RDBStorage(postgres_url)
    for arm in ("baseline", "kd"):
        trials = optuna.load_study(study_name=f"{prefix}/{arm}", storage=storage).trials
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        assert all(t.intermediate_values for t in trials)
    assert not (study.root / "optuna.db").exists()
    # the database is shared, not copied with the study: a copy refuses to drive the original's Optuna studies,
    # a moved study resumes (and from then on a copy of it refuses as well)
    copy = tmp_path / "copy"
    shutil.copytree(study.root, copy)
    assert main(["resume", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{copy} is a copy of the study {study.root}" in err, err
    moved = tmp_path / "moved"
    study.root.rename(moved)
    assert main(["resume", str(moved)]) == 0
    assert main(["resume", str(copy)]) == 2 and f"is a copy of the study {moved}" in capsys.readouterr().err
    for arm in ("baseline", "kd"):
        assert len(optuna.load_study(study_name=f"{prefix}/{arm}", storage=storage).trials) == 2
