"""The trainer: checkpoints and exact resume, the teacher cache, every arm, and `launch.py train`."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, write_spec

from fakd.cli import main
from fakd.config import ARMS
from fakd.spec import validate_spec
from fakd.train import ensure_teacher, fit, teacher_key
from fakd.train.checkpoint import latest_checkpoint, write_checkpoint
from fakd.train.data import build_splits, holdout_indices
from fakd.train.teacher import build_model, model_config


def tiny_config(arm: str = "kd+fakd", **train):
    spec = validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml")
    cfg = spec.run_config(arm)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)}) if train else cfg


def random_teacher(cfg):
    return build_model(model_config(cfg.teacher), cfg.data.num_classes, seed=123).eval()


class Stop(Exception):
    pass


def test_kill_and_resume_reaches_the_same_weights(tmp_path):
    cfg = tiny_config("kd+fakd", iters=6, eval_every=2)
    splits = build_splits(cfg)
    teacher = random_teacher(cfg)

    straight = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    fit(cfg, straight, splits, tmp_path / "straight", teacher=teacher, progress=False)

    def crash_after_first_checkpoint(metrics, checkpoint_dir):
        if metrics["iteration"] == 4:
            raise Stop

    interrupted = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    with pytest.raises(Stop):
        fit(cfg, interrupted, splits, tmp_path / "run", teacher=teacher, report=crash_after_first_checkpoint,
            progress=False)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "iter_0000004"
    torch.manual_seed(999)  # a resumed process starts from other RNG states
    resumed = build_model(cfg.student, splits.num_classes, seed=7)
    fit(cfg, resumed, splits, tmp_path / "run", teacher=teacher, resume_from="latest", progress=False)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_trains_and_reports_its_terms(tmp_path, arm):
    cfg = tiny_config(arm, iters=2, eval_every=2)
    splits = build_splits(cfg)
    reports = []
    model = build_model(cfg.student, splits.num_classes, 0)
    before = model.classifier_weight.detach().clone()
    fit(cfg, model, splits, tmp_path, teacher=random_teacher(cfg),
        report=lambda m, d: reports.append((m, d)), progress=False)
    (metrics, checkpoint), = reports
    assert Path(checkpoint, "state.pt").is_file()
    assert 0.0 <= metrics["val_miou"] <= 1.0 and len(metrics["val_iou"]) == cfg.data.num_classes
    assert ("loss_kd" in metrics) == arm.startswith("kd")
    assert ("loss_cwd" in metrics) == arm.startswith("cwd")
    assert ("fakd_strength" in metrics) == arm.endswith("fakd")
    if arm.endswith("fakd"):
        assert metrics["fakd_strength"] == pytest.approx(cfg.loss.fakd.max_strength)
    assert not torch.equal(before, model.classifier_weight.detach())


def test_checkpoints_appear_whole_or_not_at_all(tmp_path):
    write_checkpoint({"x": 1}, tmp_path, 3)
    (tmp_path / "iter_0000009").mkdir()  # a directory without state.pt: an interrupted copy
    assert latest_checkpoint(tmp_path).name == "iter_0000003"
    assert not list(tmp_path.glob(".staging*"))


def test_holdout_is_disjoint_and_seeded():
    keep, held = holdout_indices(20, 0.25, seed=1)
    assert len(held) == 5 and not set(keep) & set(held) and sorted(keep + held) == list(range(20))
    assert holdout_indices(20, 0.25, seed=1) == (keep, held)


def test_search_phase_evaluates_on_the_holdout_not_val():
    cfg = tiny_config().model_copy(update={"phase": "search"})
    splits = build_splits(cfg)
    assert len(splits.train) + len(splits.evaluation) == cfg.data.train_length
    final = build_splits(tiny_config())
    assert len(final.train) == cfg.data.train_length and len(final.evaluation) == cfg.data.val_length


def test_teacher_is_trained_once_and_reused(tmp_path, monkeypatch):
    cfg = tiny_config()
    first = ensure_teacher(cfg, tmp_path)
    assert first.path.is_file() and first.key == teacher_key(cfg)
    assert "val_miou" in first.metrics

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr("fakd.train.teacher.fit", no_training)
    again = ensure_teacher(cfg.model_copy(update={"arm": "cwd"}), tmp_path)
    assert again.path == first.path
    other = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"iters": 5})})
    assert teacher_key(other) != first.key


def test_launch_train_end_to_end(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert main(["train", str(spec), "--out", str(tmp_path / "out"), "--arm", "kd+fakd"]) == 0
    out = capsys.readouterr().out
    assert "teacher test_resnet: val mIoU" in out and "student test_efficientnet (kd+fakd): val mIoU" in out
    assert "already holds this finished run" not in out
    assert latest_checkpoint(tmp_path / "out" / "student" / "checkpoints").name == "iter_0000004"
    # running it again reuses the finished run instead of training again, and says so
    assert main(["train", str(spec), "--out", str(tmp_path / "out"), "--arm", "kd+fakd"]) == 0
    again = capsys.readouterr().out
    assert "already holds this finished run: its results are shown, nothing was trained" in again
    assert again.splitlines()[-1] == out.splitlines()[-1]
    # another configuration never resumes from (or overwrites) these checkpoints
    assert main(["train", str(spec), "--out", str(tmp_path / "out"), "--arm", "kd"]) == 2
    assert "holds a run with another configuration" in capsys.readouterr().err
