"""`fakd.study.requests`: what `launch.py extend` refuses before anything runs (an arm already in the study, an unknown
one, one without its base, a setting of the study's own arms, unfinished trials), each one line, the study unchanged.
The extensions that run are in tests/integration/test_extend.py."""

import hashlib
import json
from pathlib import Path

import pytest
from conftest import searched_spec, write_spec

from fakd.cli import main
from fakd.errors import UserError
from fakd.results import StudyDir, TrialRecord
from fakd.results.layout import FORMAT
from fakd.results.records import write_trial
from fakd.study.requests import extend_request


def digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for root in paths:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            sha.update(str(path).encode() + path.read_bytes())
    return sha.hexdigest()


def study_spec(arms: list[str]) -> dict:
    """A reproducible tiny study; `search.add_on` and `search.confirm` left to their defaults, as a user would."""
    raw = searched_spec(arms, num_samples=2, scheduler="asha", reproducible=True, generation_size=2,
                        retrain_seeds=1)
    raw["train"].update(iters=4, eval_every=2)
    del raw["search"]["add_on"], raw["search"]["confirm"]
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
    names, settings = args[1], args[3:] if len(args) > 2 else []
    with pytest.raises(UserError) as error:  # the request behind the command, on its own
        extend_request(root, names, settings)
    assert error.value.key == key and says in error.value.message


def test_extending_a_directory_that_is_not_a_study_is_refused(tmp_path, capsys):
    assert main(["extend", str(tmp_path), "--arms", "kd"]) == 2
    assert "is not a study directory" in capsys.readouterr().err


def test_a_study_with_unfinished_trials_is_finished_first(tmp_path, capsys):
    root = fake_study(tmp_path, ["baseline", "kd"])
    write_trial(StudyDir(root), TrialRecord(key="search/kd-000", phase="search", arm="kd", index=0, values={}, run={},
                                            student="s", seed=0, state="RUNNING"))
    before = digest([root])
    assert main(["extend", str(root), "--arms", "cwd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unfinished trials (search/kd-000)" in err and "launch.py resume" in err, err
    assert digest([root]) == before


@pytest.mark.parametrize(("method", "says"), [
    ("no_such_package_xyz:loss", "cannot import no_such_package_xyz"),
    ("tests.plugins.methods:not_a_number", "returns nan"),
])
def test_an_extension_with_a_method_that_fails_preflight_changes_nothing(tmp_path, capsys, method, says):
    """Preflight runs under the study's lock (as every driver's does): the lock file is all that a refused extension
    leaves, as any command that took the lock does."""
    root = fake_study(tmp_path, ["baseline", "kd"])
    StudyDir(root).lock_file.touch()
    before = digest([root])
    assert main(["extend", str(root), "--arms", "mine", "--set", f"methods.mine.loss={method}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "methods.mine.loss" in err and f"method mine ({method})" in err and says in err
    StudyDir(root).lock_file.write_text("")
    assert digest([root]) == before
