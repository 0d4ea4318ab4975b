"""Spec validation: every mistake is one line naming the file and the key, exit code 2."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SPEC, write_spec

from fakd.cli import main
from fakd.errors import UserError
from fakd.spec import ConfirmConfig, SearchConfig, apply_override, load_spec, validate_spec

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_loads_with_its_search_space():
    spec = load_spec(ROOT / "studies" / "quickstart.yaml")
    assert {"train.lr", "loss.fakd.max_strength"} <= set(spec.space)
    cfg = spec.run_config("kd+fakd")
    assert cfg.effective_loss.fakd.enabled and cfg.effective_loss.kd.weight > 0
    assert cfg.effective_loss.cwd.weight == 0
    assert spec.run_config("baseline").effective_loss.distills is False


def test_distribution_defaults_and_values():
    raw = copy.deepcopy(TINY_SPEC)
    raw["train"]["lr"] = {"loguniform": [0.001, 0.1]}
    raw["loss"]["fakd"]["max_strength"] = {"uniform": [0.0, 4.0], "default": 1.5}
    raw["train"]["batch_size"] = {"int": [2, 4]}
    raw["student"]["backbone"] = {"choice": ["test_efficientnet", "test_resnet"]}
    from fakd.spec import validate_spec

    spec = validate_spec(raw, "mem.yaml")
    assert spec.defaults.train.lr == pytest.approx(0.01)
    assert spec.defaults.loss.fakd.max_strength == 1.5
    assert spec.defaults.train.batch_size == 3
    assert spec.defaults.student.backbone == "test_efficientnet"
    cfg = spec.run_config("kd", {"train.lr": 0.05, "student.backbone": "test_resnet"})
    assert (cfg.train.lr, cfg.student.backbone) == (0.05, "test_resnet")


def test_override_is_yaml_typed_and_dotted():
    tree = {"train": {"iters": 3}}
    apply_override(tree, "train.iters=7", "f.yaml")
    apply_override(tree, "loss.kd.temperature={choice: [1, 2]}", "f.yaml")
    assert tree == {"train": {"iters": 7}, "loss": {"kd": {"temperature": {"choice": [1, 2]}}}}


BAD = [
    ("train.itres=5", "train.itres", "accepted: iters"),
    ("train.iters=-3", "train.iters", "greater than 0"),
    ("train.lr=fast", "train.lr", "valid number"),
    ("student.backbone=resnet19", "student.backbone", "not a timm model name"),
    ("loss.kd.temperature={choice: []}", "loss.kd.temperature", "non-empty"),
    ("train.lr={uniform: [0.1, 0.01]}", "train.lr", "above the upper bound"),
    ("arms=[kd, foo]", "arms.1", "'kd+fakd'"),
    ("teacher.head=unet", "teacher.head", "'deeplabv3', 'psp' or 'fcn'"),
    ("teacher.output_stride=4", "teacher.output_stride", "8, 16 or 32"),
    ("data.name=cityscapes", "data.root", "needs a root"),
    ("student.pretrained=/nope.pth", "student.pretrained", "not found"),
    ("teacher.iters={int: [1, 5]}", "teacher.iters", "cannot be searched"),
    ("loss.fakd.schedule={choice: [linear, cos]}", "loss.fakd.schedule", "'cosine'"),
    ("colour=red", "colour", "unknown section"),
    ("search.decide={margin: 0}", "search.decide.margin", "greater than 0"),
    ("search.decide={alpha: 1.5}", "search.decide.alpha", "less than 1"),
    ("search.decide={alpha: 0}", "search.decide.alpha", "greater than 0"),
    ("search.decide={round: 0}", "search.decide.round", "greater than or equal to 1"),
    ("search.decide={max_seeds: 1}", "search.decide.max_seeds", "greater than or equal to 2"),
    ("search.decide={rounds: 2}", "search.decide.rounds", "accepted: margin, alpha, max_seeds, round"),
    ("arms=[baseline]", "search.decide", "no comparison to decide"),
    ("search.confirm={top: 2, seeds: 1}", "search.confirm.top", "above search.num_samples (1)"),
    ("search.confirm={top: 1, seeds: 0}", "search.confirm.seeds", "greater than or equal to 1"),
    ("search.confirm={top: 1}", "search.confirm.seeds", "required key is missing"),
    ("search.confirm=yes", "search.confirm", "takes {top: K, seeds: S}, or false"),
    ("search.add_on=inherit", "search.add_on", "kd+fakd adds FAKD to kd, which is not one of the arms"),
    ("search.add_on=always", "search.add_on", "'joint' or 'inherit'"),
    ("search.sampler=bayes", "search.sampler", "'tpe', 'gp', 'qmc' or 'random'"),
]


@pytest.mark.parametrize(("override", "key", "accepted"), BAD)
def test_bad_spec_exits_2_with_one_line(tiny_spec_path, capsys, override, key, accepted):
    extra = {"arms=[baseline]": ["--set", "search.decide={}"],
             "search.add_on=inherit": ["--set", "arms=[baseline, kd+fakd]"]}.get(override, [])
    assert main(["train", str(tiny_spec_path), "--set", override, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"error: {tiny_spec_path}: {key}:")
    assert accepted in err


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nteacher: [unclosed\n")
    assert main(["train", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_unknown_backbone_that_cannot_dilate_is_caught_before_training(tmp_path, capsys):
    spec = copy.deepcopy(TINY_SPEC)
    spec["student"]["backbone"] = "test_vit"
    path = write_spec(tmp_path, spec)
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: student.output_stride" in err
    assert not (tmp_path / "out" / "student").exists()


@pytest.mark.driver
def test_command_line_prints_no_traceback(tiny_spec_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "train", str(tiny_spec_path), "--set", "train.iters=0"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_user_error_located_prefixes_key():
    error = UserError("bad", key="output_stride").located("s.yaml", "teacher")
    assert error.format() == "s.yaml: teacher.output_stride: bad"


def as_study(tmp_path: Path, raw: dict) -> SearchConfig:
    """The search settings of `raw` read back as a study's spec.yaml (the defaults it was made with apply)."""
    return load_spec(write_spec(tmp_path, raw, "spec.yaml"), study=True).settings.search


def test_add_on_defaults_to_inherit_where_an_add_on_arm_has_its_base_and_the_study_pins_it(tmp_path):
    def add_on(arms: list[str], **changes) -> str:
        raw = copy.deepcopy(TINY_SPEC)
        raw["search"].pop("add_on")
        raw["arms"] = arms
        for key, value in changes.items():
            raw[key] = value
        return validate_spec(raw, "tiny.yaml").settings.search.add_on

    assert add_on(["baseline", "kd", "kd+fakd"]) == "inherit"
    assert add_on(["baseline", "cwd", "cwd+fakd"]) == "inherit"
    assert add_on(["baseline", "kd"]) == "joint"  # no add-on arm
    assert add_on(["baseline", "kd+fakd"]) == "joint"  # an add-on without its base arm
    searched_student = {**TINY_SPEC["student"], "backbone": {"choice": ["test_efficientnet", "test_resnet"]}}
    assert add_on(["baseline", "kd", "kd+fakd"], student=searched_student) == "joint"
    quickstart = load_spec("studies/quickstart.yaml")
    assert quickstart.settings.search.add_on == "inherit" and quickstart.raw["search"]["add_on"] == "inherit"
    # a study's spec.yaml written before sweep pinned the value keeps the default it was made with
    raw = copy.deepcopy(TINY_SPEC)
    raw["search"].pop("add_on")
    assert load_spec(write_spec(tmp_path, raw, "spec.yaml")).settings.search.add_on == "inherit"
    assert as_study(tmp_path, raw).add_on == "joint"
    raw["search"]["add_on"] = "inherit"
    assert as_study(tmp_path, raw).add_on == "inherit"


def test_the_sampler_defaults_to_gp_and_the_study_pins_it(tmp_path):
    raw = copy.deepcopy(TINY_SPEC)
    spec = validate_spec(copy.deepcopy(raw), "tiny.yaml")
    assert spec.settings.search.sampler == "gp" and spec.raw["search"]["sampler"] == "gp"  # what sweep writes
    # a study's spec.yaml written before sweep pinned the sampler keeps the TPE it was made with
    assert load_spec(write_spec(tmp_path, raw, "spec.yaml")).settings.search.sampler == "gp"
    assert as_study(tmp_path, raw).sampler == "tpe"
    raw["search"]["sampler"] = "qmc"
    assert as_study(tmp_path, raw).sampler == "qmc"


def test_confirmation_is_on_by_default_where_an_arm_has_trials_to_choose_between_and_the_study_pins_it(tmp_path):
    raw = copy.deepcopy(TINY_SPEC)
    raw["search"] = {"num_samples": 3}
    spec = validate_spec(copy.deepcopy(raw), "tiny.yaml")
    assert spec.settings.search.confirmation == ConfirmConfig(top=2, seeds=2)
    assert spec.raw["search"]["confirm"] == {"top": 2, "seeds": 2}  # what sweep writes into the study's spec.yaml
    one = validate_spec({**copy.deepcopy(raw), "search": {"num_samples": 1}}, "tiny.yaml")
    assert one.settings.search.confirmation is None and one.raw["search"]["confirm"] is False  # nothing to choose
    off = validate_spec({**copy.deepcopy(raw), "search": {"num_samples": 3, "confirm": False}}, "tiny.yaml")
    assert off.settings.search.confirmation is None and off.raw["search"]["confirm"] is False
    # a study's spec.yaml written before confirmation was the default keeps selecting on its search scores
    assert as_study(tmp_path, raw).confirmation is None
    assert as_study(tmp_path, spec.raw).confirmation == ConfirmConfig(top=2, seeds=2)
