"""Retrain on demand: more seeds train only the missing ones, fewer is an error, and the equal-time
budget converts the baseline's wall-clock into each arm's iterations from the arm's measured step time."""

import csv
import hashlib
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from fakd.cli import main
from fakd.results import open_study_dir, read_trials
from fakd.vocab import ARM_TABLE

pytestmark = pytest.mark.ray


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def retrain_files(study_dir: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in study_dir.glob("trials/retrain/*/results.jsonl")}


def test_more_seeds_train_only_the_missing_ones(searched_study, tmp_path, ray_local, capsys):
    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    before = retrain_files(copy)
    assert len(before) == 6  # 3 arms × 2 seeds

    digest = tree_digest(copy)
    assert main(["retrain", str(copy), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "--seeds: the study already has 2 retrain seeds" in err and err.count("\n") == 1
    for bad, message in ((["--seeds", "0"], "--seeds: takes 1 to 1000 seeds, got 0"),
                         (["--seeds", "100000"], "--seeds: takes 1 to 1000 seeds, got 100000"),
                         (["--seeds", "3", "--budget", "equal-flops"], "invalid choice: 'equal-flops'")):
        assert main(["retrain", str(copy), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert tree_digest(copy) == digest, "a refused retrain changed the study"

    assert main(["retrain", str(copy), "--seeds", "3"]) == 0
    printed = capsys.readouterr()
    assert "retrain finished in" in printed.out  # the driver's own lines, and none of Tune's console
    assert "Configuration for experiment" not in printed.out + printed.err
    after = retrain_files(copy)
    assert set(after) - set(before) == {f"{source}-seed3" for source in {k.rsplit("-", 1)[0] for k in before}}
    assert all(after[key] == text for key, text in before.items()), "an existing seed trained again"
    assert json.loads((copy / "study.json").read_text())["retrain_seeds"] == 3
    capsys.readouterr()
    assert main(["export", str(copy), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "all 9 retrained runs finished" in out.err


def test_equal_time_gives_each_arm_the_baselines_wall_clock(searched_study, tmp_path, ray_local):
    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    assert main(["retrain", str(copy), "--seeds", "1", "--budget", "equal-time"]) == 0
    records = read_trials(open_study_dir(copy))
    step = {arm: statistics.median(r.seconds_per_iter for r in records if r.phase == "search" and r.arm == arm)
            for arm in ("baseline", "kd", "kd+fakd")}
    timed = [r for r in records if r.phase == "retrain" and r.budget == "equal-time"]
    assert sorted(r.arm for r in timed) == ["baseline", "kd", "kd+fakd"]
    for record in timed:
        expected = max(1, round(4 * step["baseline"] / step[record.arm]))
        assert record.run["train"]["iters"] == expected == record.iterations, (record.arm, step)
        assert record.key.endswith("-seed1-time") and record.state == "COMPLETE"
    untouched = [r for r in records if r.phase == "retrain" and r.budget == "equal-iters"]
    assert len(untouched) == 6 and all(r.run["train"]["iters"] == 4 for r in untouched)


def seeds_of(records, arm):
    return sorted(r.seed for r in records if r.phase == "retrain" and r.arm == arm)


def test_until_decided_adds_rounds_to_undecided_comparisons_only(searched_study, tmp_path, ray_local, capsys):
    """Rounds of 1 seed up to 4: after each round, exactly the arms of the comparisons still undecided (recomputed
    here from the records of the seeds trained so far) get the next seed, every arm the same seeds."""
    from fakd.results.verdicts import study_verdicts, table_comparisons
    from fakd.spec import DecideConfig, load_spec

    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    spec = load_spec(copy / "spec.yaml")
    assert main(["retrain", str(copy), "--until-decided", "--max-seeds", "4"]) == 0
    out = capsys.readouterr().out
    assert "decisions at 2 seeds" in out
    records = read_trials(open_study_dir(copy))
    meta = json.loads((copy / "study.json").read_text())
    assert meta["retrain_mode"] == "sequential" and meta["decide"]["max_seeds"] == 4
    rule = DecideConfig.model_validate(meta["decide"])
    assert all(r.state == "COMPLETE" for r in records if r.phase == "retrain")
    for target in (2, 3):
        seen = [r for r in records if r.phase != "retrain" or r.seed <= target]
        found = study_verdicts(spec, seen, table_comparisons(spec, seen), rule)
        undecided = found.undecided()
        needed = {arm for _, arm, _ in undecided} | {ARM_TABLE[arm].base for _, arm, _ in undecided}
        trained = {arm for arm in spec.settings.arms if target + 1 in seeds_of(records, arm)}
        assert trained == (needed if undecided else set()), (target, found.verdicts)
    for arm in spec.settings.arms:
        assert seeds_of(records, arm) == list(range(1, len(seeds_of(records, arm)) + 1))
    rounds = meta["decide_rounds"]  # recorded before each round is planned: what a resumed driver finishes
    assert rounds[0] == {"budget": "equal-iters", "seeds": 2, "arms": ["baseline", "kd", "kd+fakd"]}
    for step in rounds:
        assert step["arms"] == [arm for arm in spec.settings.arms if step["seeds"] in seeds_of(records, arm)]
    capsys.readouterr()
    assert main(["export", str(copy), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["decision"] for row in rows if row["base_arm"]} <= {"better", "worse", "equivalent", "undecided"}


def test_until_decided_refusals_change_nothing(searched_study, tmp_path, capsys):
    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    empty = tmp_path / "unretrained"
    shutil.copytree(study.root, empty)
    shutil.rmtree(empty / "trials" / "retrain")
    digests = {copy: tree_digest(copy), empty: tree_digest(empty)}
    cases = [
        ([str(copy), "--until-decided", "--max-seeds", "1"], "--max-seeds: the study already has 2 retrain seeds"),
        ([str(copy), "--max-seeds", "5", "--seeds", "3"], "--max-seeds: applies to --until-decided only"),
        ([str(copy), "--until-decided", "--seeds", "3"], "--seeds: takes either --seeds N or --until-decided"),
        ([str(copy)], "--seeds: takes either --seeds N or --until-decided"),
        ([str(empty), "--until-decided"], "--until-decided: " + str(empty) + " has no retrain runs"),
    ]
    for argv, message in cases:
        assert main(["retrain", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert {path: tree_digest(path) for path in digests} == digests


def test_fewer_seeds_drop_the_planned_runs_that_never_started(searched_study, tmp_path, ray_local, capsys):
    _, study = searched_study
    copy = tmp_path / "study"
    shutil.copytree(study.root, copy)
    planned = []
    for trial in sorted((copy / "trials" / "retrain").glob("*-seed2")):  # a later seed planned, never started
        record = json.loads((trial / "trial.json").read_text())
        key = record["key"].replace("-seed2", "-seed7")
        target = copy / "trials" / key
        target.mkdir()
        (target / "trial.json").write_text(json.dumps({**record, "key": key, "seed": 7, "index": 7,
                                                       "state": "PENDING", "finished": None}))
        planned.append(target)
    finished = retrain_files(copy)
    assert main(["retrain", str(copy), "--seeds", "1"]) == 2  # seed 2 finished: it is never dropped
    assert "--seeds: the study already has 2 retrain seeds at equal-iters that started or finished" in \
        capsys.readouterr().err
    assert main(["retrain", str(copy), "--seeds", "2"]) == 0
    assert "dropped 3 planned retrain runs of seeds above 2 (equal-iters) that never started" in capsys.readouterr().out
    assert not any(p.exists() for p in planned) and retrain_files(copy) == finished
