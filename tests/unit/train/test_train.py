"""The trainer: checkpoints and exact resume, the teacher cache, every arm, and `launch.py train`."""

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, write_spec

from fakd.cli import main
from fakd.spec import load_spec, validate_spec
from fakd.train import ensure_teacher, fit, teacher_key
from fakd.train.checkpoint import latest_checkpoint, write_checkpoint
from fakd.train.data import build_splits, holdout_indices, train_loader
from fakd.train.loop import accumulated_step
from fakd.train.objective import SegmentationObjective
from fakd.train.optim import build_optimizer
from fakd.train.run import run_distillation
from fakd.train.teacher import build_model, model_config
from fakd.vocab import ARMS


def tiny_config(arm: str = "kd+fakd", **train):
    spec = validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml")
    cfg = spec.run_config(arm)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)}) if train else cfg


def random_teacher(cfg):
    return build_model(model_config(cfg.teacher), cfg.data.num_classes, seed=123).eval()


class Stop(Exception):
    pass


@pytest.mark.parametrize("accumulate", [1, 2])
def test_kill_and_resume_reaches_the_same_weights(tmp_path, accumulate):
    cfg = tiny_config("kd+fakd", iters=6, eval_every=2, accumulate=accumulate)
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
    assert ("loss_dist" in metrics) == arm.startswith("dist")
    assert ("fakd_strength" in metrics) == arm.endswith("fakd")
    if arm.endswith("fakd"):
        assert metrics["fakd_strength"] == pytest.approx(cfg.loss.fakd.max_strength)
    assert not torch.equal(before, model.classifier_weight.detach())


def with_data(cfg, **data):
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=data)})


def one_update(cfg, splits, batches, teacher, train_mode=False):
    """The student of `cfg` after one optimizer step over `batches`; its objective and the step's terms."""
    model = build_model(cfg.student, splits.num_classes, cfg.train.seed).train(train_mode)
    objective = SegmentationObjective(cfg.effective_loss, splits.num_classes, model.feature_dim, cfg.train.iters)
    terms = accumulated_step(model, objective, build_optimizer(model, cfg.train), batches, 0, teacher)
    return model, objective, terms


@pytest.mark.parametrize("arm", ["baseline", "kd", "cwd", "kd+fakd"])
def test_accumulating_micro_batches_equals_one_larger_batch_without_batch_coupling(arm):
    """accumulate=2 with batch 2 makes the same first update as accumulate=1 with batch 4 when nothing couples the
    samples of a batch: BatchNorm in eval mode (running statistics; no dropout), CE without ignored pixels (no
    scale below 1, so no padding), KD and CWD as means over equal pixel and map counts, and FAKD at a strength of
    0 (the linear schedule's first step) or, for its covariance, after the whole step.

    Not equal, by design: BatchNorm in train mode (each micro-batch is normalised with its own statistics, and
    the running statistics move once per micro-batch), and FAKD's bound at a non-zero strength (an early
    micro-batch's bound uses a covariance that has not seen the later micro-batches yet)."""
    base = with_data(tiny_config(arm), scale_range=(1.0, 1.5))
    base = base.model_copy(update={"loss": base.loss.model_copy(update={
        "fakd": base.loss.fakd.model_copy(update={"schedule": "linear"})})})
    double = base.model_copy(update={"train": base.train.model_copy(update={"batch_size": 4})})
    micro = base.model_copy(update={"train": base.train.model_copy(update={"batch_size": 2, "accumulate": 2})})
    splits = build_splits(double)
    # the data: micro-batches 0 and 1 of the accumulating run hold exactly batch 0 of the double-batch run
    ((images, labels),) = itertools.islice(train_loader(double, splits.train, 1, 0), 1)
    first, second = train_loader(micro, splits.train, 2, 0)
    assert torch.equal(torch.cat([first[0], second[0]]), images) and torch.equal(torch.cat([first[1], second[1]]),
                                                                                 labels)
    assert (labels != 255).all()
    teacher = random_teacher(base)

    one, one_objective, one_terms = one_update(double, splits, [(images, labels)], teacher)
    two, two_objective, two_terms = one_update(micro, splits, [first, second], teacher)
    initial = build_model(base.student, splits.num_classes, base.train.seed).state_dict()
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(one.classifier_weight, initial["head.classifier.weight"].flatten(1))
    # the reported terms are the mean over the micro-batches: here the double batch's own terms
    assert set(two_terms) == set(one_terms)
    for name, value in one_terms.items():
        assert float(two_terms[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), name
    if arm == "kd+fakd":  # the covariance saw every micro-batch: the same pooled statistics as the double batch
        assert torch.equal(two_objective.covariance.count, one_objective.covariance.count)
        assert int(one_objective.covariance.count.sum()) == labels.shape[0] * 4 * 4  # every pixel at stride 8
        torch.testing.assert_close(two_objective.covariance.covariance, one_objective.covariance.covariance)

    # train-mode BatchNorm couples the samples of a batch: then the updates differ
    one, _, _ = one_update(double, splits, [(images, labels)], teacher, train_mode=True)
    two, _, _ = one_update(micro, splits, [first, second], teacher, train_mode=True)
    assert not torch.allclose(one.classifier_weight, two.classifier_weight, rtol=1e-3, atol=1e-5)


def test_accumulate_counts_optimizer_steps_and_reports_the_mean_loss(tmp_path):
    cfg = tiny_config("kd", iters=2, eval_every=1, accumulate=3)
    splits = build_splits(cfg)
    reports = []
    model = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    fit(cfg, model, splits, tmp_path, teacher=random_teacher(cfg), report=lambda m, d: reports.append(m),
        progress=False)
    assert [m["iteration"] for m in reports] == [1, 2]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "iter_0000002"
    for metrics in reports:
        assert metrics["loss"] == pytest.approx(metrics["loss_ce"] + cfg.loss.kd.weight * metrics["loss_kd"])


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
    cfg = tiny_config().model_copy(update={"split": "holdout"})
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
    # what the command runs (fakd.train.run): the same run, reused, with the metrics the command printed
    cfg = load_spec(spec).run_config("kd+fakd", split="val")
    result = run_distillation(cfg, tmp_path / "out")
    assert result["reused"] and f"{result['student']['val_miou']:.4f}" in out
    record = tmp_path / "out" / "student" / "run.json"  # as recorded before runs had a methods section
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "methods"}))
    assert run_distillation(cfg, tmp_path / "out")["reused"]
