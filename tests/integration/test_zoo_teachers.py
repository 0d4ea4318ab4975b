"""Model-zoo teachers in studies: spec keys, preflight, `launch.py train` with a frozen mmseg or torchvision teacher,
evaluated once, and the study's copy of the teacher (tiny synthetic checkpoints, CPU)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SPEC, write_spec
from test_zoo import NUM_CLASSES, mmseg_state, save_checkpoint
from torchvision.models import segmentation

from fakd.cli import main
from fakd.config import TORCHVISION_ARCHS
from fakd.errors import UserError
from fakd.metrics import ConfusionMatrix
from fakd.models.zoo import TORCHVISION_ARCHS as LOADER_ARCHS
from fakd.models.zoo import ZooTeacher, load_mmseg, load_torchvision
from fakd.preflight import preflight
from fakd.spec import load_spec
from fakd.train import evaluate_teacher, fit, load_teacher
from fakd.train.data import build_splits, eval_loader
from fakd.train.teacher import TeacherArtifact, build_model


def mmseg_checkpoint(path: Path, num_classes: int = NUM_CLASSES, head: str = "pspnet", seed: int = 0) -> str:
    """A tiny mmseg EncoderDecoder checkpoint (ResNetV1c depth 18, 8 channels) with `num_classes` classes, in
    mmseg's key layout (tests/test_zoo.py's `mmseg_state`, its classifiers re-drawn for the class count)."""
    state = mmseg_state(18, head, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for prefix in ("decode_head.conv_seg", "auxiliary_head.conv_seg"):
        channels = state[f"{prefix}.weight"].shape[1]
        state[f"{prefix}.weight"] = torch.randn(num_classes, channels, 1, 1, generator=gen) * (2.0 / channels) ** 0.5
        state[f"{prefix}.bias"] = torch.randn(num_classes, generator=gen) * 0.1
    return save_checkpoint(path, state)


def lraspp_checkpoint(path: Path, num_classes: int = NUM_CLASSES) -> str:
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return str(path)


def zoo_spec(teacher: dict[str, Any], num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["num_classes"] = num_classes
    spec["teacher"] = teacher
    return spec


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------------ spec


def test_torchvision_archs_are_one_list() -> None:
    assert LOADER_ARCHS is TORCHVISION_ARCHS


MMSEG = {"source": "mmseg", "checkpoint": "/ckpt/pspnet.pth"}
TV = {"source": "torchvision", "arch": "lraspp_mobilenet_v3_large", "checkpoint": "/ckpt/lraspp.pth"}


@pytest.mark.parametrize(
    ("teacher", "key", "message"),
    [
        ({**MMSEG, "backbone": "resnet101"}, "teacher.backbone", "has no effect with teacher.source: mmseg"),
        ({**MMSEG, "head": "psp"}, "teacher.head", "has no effect with teacher.source: mmseg"),
        ({**MMSEG, "head_channels": 512}, "teacher.head_channels", "has no effect"),
        ({**MMSEG, "pretrained": False}, "teacher.pretrained", "has no effect"),
        ({**MMSEG, "iters": 80000}, "teacher.iters", "never trained"),
        ({**MMSEG, "lr": 0.01}, "teacher.lr", "never trained"),
        ({**MMSEG, "arch": "fcn_resnet50"}, "teacher.arch", "has no effect with teacher.source: mmseg"),
        ({**MMSEG, "output_stride": 32}, "teacher.output_stride", "8 or 16"),
        ({**TV, "backbone": "resnet50"}, "teacher.backbone", "has no effect with teacher.source: torchvision"),
        ({**TV, "output_stride": 8}, "teacher.output_stride", "has no effect with teacher.source: torchvision"),
        ({"source": "mmseg"}, "teacher.checkpoint", "is required with teacher.source: mmseg"),
        ({"source": "torchvision", "checkpoint": "/c.pth"}, "teacher.arch", "is required with teacher.source: torch"),
        ({**TV, "arch": "deeplabv3_resnet18"}, "teacher.arch", "lraspp_mobilenet_v3_large"),
        ({"backbone": "test_resnet", "arch": "fcn_resnet50"}, "teacher.arch", "no effect with teacher.source: timm"),
        ({"head": "fcn"}, "teacher.backbone", "is required with teacher.source: timm"),
        ({"source": "caffe", "checkpoint": "/c.pth"}, "teacher.source", "'timm', 'mmseg' or 'torchvision'"),
    ],
)
def test_zoo_keys_that_change_nothing_are_errors(tmp_path: Path, teacher: dict[str, Any], key: str,
                                                 message: str) -> None:
    path = write_spec(tmp_path, zoo_spec(teacher))
    with pytest.raises(UserError) as info:
        load_spec(path)
    error = info.value
    assert error.key == key and error.file == str(path) and message in error.message
    assert "\n" not in error.format() and error.format().startswith(f"{path}: {key}: ")


def test_zoo_specs_validate_and_existing_ones_stay_valid(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, zoo_spec({**MMSEG, "output_stride": 16}), "mmseg.yaml"))
    teacher = spec.defaults.teacher
    assert (teacher.source, teacher.output_stride, teacher.backbone, teacher.is_zoo) == ("mmseg", 16, None, True)
    assert teacher.label == "mmseg:pspnet"
    assert load_spec(write_spec(tmp_path, zoo_spec(TV), "tv.yaml")).defaults.teacher.label == (
        "torchvision:lraspp_mobilenet_v3_large")
    timm = load_spec(write_spec(tmp_path, TINY_SPEC, "tiny.yaml")).defaults.teacher
    assert (timm.source, timm.backbone, timm.is_zoo, timm.label) == ("timm", "test_resnet", False, "test_resnet")
    # --set switches a recipe's teacher to a zoo one only together with dropping the timm keys
    with pytest.raises(UserError) as info:
        load_spec(write_spec(tmp_path, TINY_SPEC, "t.yaml"), ["teacher.source=mmseg", "teacher.checkpoint=/c.pth"])
    assert info.value.key == "teacher.backbone"


# -------------------------------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("source", ["mmseg", "torchvision"])
def test_preflight_refuses_a_teacher_for_another_class_count(tmp_path: Path, source: str) -> None:
    if source == "mmseg":
        teacher = {"source": "mmseg", "checkpoint": mmseg_checkpoint(tmp_path / "teacher.pth", num_classes=5)}
    else:
        teacher = {**TV, "checkpoint": lraspp_checkpoint(tmp_path / "teacher.pth", num_classes=5)}
    spec = load_spec(write_spec(tmp_path, zoo_spec(teacher, num_classes=4)))
    with pytest.raises(UserError) as info:
        preflight(spec)
    error = info.value
    assert error.key == "teacher.checkpoint" and error.file == str(tmp_path / "spec.yaml")
    line = error.format()
    assert "\n" not in line and str(tmp_path / "teacher.pth") in line
    assert "for 5 classes" in line and "the dataset has 4" in line
    # the matching class count passes, and so does a resume (the study holds the copy): no file is read
    assert preflight(load_spec(write_spec(tmp_path, zoo_spec(teacher, num_classes=5)))).num_classes == 5
    assert preflight(spec, teacher_checkpoint=False).num_classes == 4


def test_preflight_reads_zoo_files_safely_and_names_them(tmp_path: Path) -> None:
    from test_zoo import CreatesFile

    target = tmp_path / "pwned"
    malicious = tmp_path / "malicious.pth"
    torch.save({"state_dict": mmseg_state(18, "fcn"), "meta": {"x": CreatesFile(target)}}, malicious)
    spec = load_spec(write_spec(tmp_path, zoo_spec({"source": "mmseg", "checkpoint": str(malicious)})))
    with pytest.raises(UserError) as info:
        preflight(spec)
    assert info.value.key == "teacher.checkpoint" and str(malicious) in info.value.format()
    assert not target.exists()
    missing = load_spec(write_spec(tmp_path, zoo_spec({"source": "mmseg", "checkpoint": str(tmp_path / "no.pth")})))
    with pytest.raises(UserError, match="teacher checkpoint not found") as info:
        preflight(missing)
    assert info.value.key == "teacher.checkpoint"


# --------------------------------------------------------------------------------------- training and evaluation


def reference_miou(model: torch.nn.Module, cfg: Any) -> float:
    """The zoo model's own full-size prediction scored on the validation split, without the harness's evaluate."""
    splits = build_splits(cfg)
    matrix = ConfusionMatrix(splits.num_classes)
    with torch.no_grad():
        for images, labels in eval_loader(cfg, splits.evaluation):
            matrix.update(model(images).argmax(1), labels)
    return matrix.summary()["miou"]


@pytest.mark.parametrize("source", ["mmseg", "torchvision"])
def test_launch_train_distils_from_a_frozen_zoo_teacher_evaluated_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    if source == "mmseg":
        teacher = {"source": "mmseg", "checkpoint": mmseg_checkpoint(tmp_path / "pspnet_r18.pth")}
    else:
        teacher = {**TV, "checkpoint": lraspp_checkpoint(tmp_path / "lraspp.pth")}
    original = digest(teacher["checkpoint"])
    spec_path = write_spec(tmp_path, zoo_spec(teacher))
    out = tmp_path / "out"
    assert main(["train", str(spec_path), "--out", str(out), "--arm", "kd+fakd"]) == 0
    printed = capsys.readouterr().out

    # the file was copied beside the run, evaluated once, and its metrics recorded there
    (meta_file,) = (out / "teachers").glob("*/meta.json")
    meta = json.loads(meta_file.read_text())
    assert meta["key"] == meta_file.parent.name and meta["key"].startswith(f"{source}-")
    assert meta["source"] == source and meta["checkpoint"] == teacher["checkpoint"]
    copied = meta_file.parent / "teacher.pt"
    assert digest(copied) == digest(teacher["checkpoint"]) == original  # nothing ever writes the teacher
    metrics = meta["metrics"]
    assert {"val_miou", "val_iou", "val_pixel_acc"} <= set(metrics) and len(metrics["val_iou"]) == NUM_CLASSES
    assert f"val mIoU {metrics['val_miou']:.4f}" in printed.splitlines()[-2]  # the teacher line
    spec = load_spec(spec_path)
    cfg = spec.run_config("kd+fakd")
    network = load_mmseg(copied) if source == "mmseg" else load_torchvision(TV["arch"], copied)
    assert metrics["val_miou"] == pytest.approx(reference_miou(network, cfg), abs=1e-12)
    assert "student test_efficientnet (kd+fakd): val mIoU" in printed.splitlines()[-1]
    assert (out / "student" / "checkpoints" / "iter_0000004").is_dir()

    # the same run again trains and evaluates nothing
    def no_evaluation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the zoo teacher was evaluated again")

    monkeypatch.setattr("fakd.train.teacher.evaluate_teacher", no_evaluation)
    assert main(["train", str(spec_path), "--out", str(out), "--arm", "kd+fakd"]) == 0
    assert "already holds this finished run" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["mmseg", "torchvision"])
def test_zoo_teacher_is_frozen_through_training_and_gives_logits_at_its_stride(tmp_path: Path, source: str) -> None:
    if source == "mmseg":
        teacher_cfg = {"source": "mmseg", "checkpoint": mmseg_checkpoint(tmp_path / "t.pth", head="deeplabv3")}
    else:
        teacher_cfg = {**TV, "checkpoint": lraspp_checkpoint(tmp_path / "t.pth")}
    cfg = load_spec(write_spec(tmp_path, zoo_spec(teacher_cfg))).run_config("cwd+fakd")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iters": 3, "eval_every": 3})})
    splits = build_splits(cfg)
    teacher = load_teacher(TeacherArtifact(Path(teacher_cfg["checkpoint"]), "test", {}), cfg, splits.num_classes)
    assert isinstance(teacher, ZooTeacher) and not teacher.full_resolution
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}  # BN statistics included

    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = teacher(images).logits
        full = teacher.network(images)
    assert logits.shape == (2, NUM_CLASSES, 4, 6)  # stride 8, like the student's logits: no resize in the losses
    # the network's own full-size prediction is exactly these logits resized bilinearly (align_corners False)
    torch.testing.assert_close(full, F.interpolate(logits, size=(32, 48), mode="bilinear", align_corners=False))
    student = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    student_before = student.classifier_weight.detach().clone()
    metrics = fit(cfg, student, splits, tmp_path / "run", teacher=teacher, progress=False)
    assert metrics["iteration"] == 3 and "loss_cwd" in metrics and not torch.equal(student_before,
                                                                                    student.classifier_weight)
    teacher.train()  # a zoo teacher stays in eval mode whatever is asked of it
    assert not teacher.training and not any(m.training for m in teacher.modules())
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not any(p.requires_grad for p in teacher.parameters())


def test_evaluate_teacher_scores_the_validation_split(tmp_path: Path) -> None:
    path = mmseg_checkpoint(tmp_path / "t.pth", head="fcn")
    cfg = load_spec(write_spec(tmp_path, zoo_spec({"source": "mmseg", "checkpoint": path}))).run_config("kd")
    metrics = evaluate_teacher(path, cfg.model_copy(update={"split": "holdout"}))  # always scored on val
    assert metrics["val_miou"] == pytest.approx(reference_miou(load_mmseg(path), cfg), abs=1e-12)
    assert metrics["params"] == sum(p.numel() for p in load_mmseg(path).parameters())


def test_study_copies_and_evaluates_a_zoo_teacher_once(tmp_path: Path, ray_local: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fakd.results import StudyDir
    from fakd.results.layout import write_json
    from fakd.study.handoff import StudyTeacher, TrialContext
    from fakd.study.teacher import GIVEN_TEACHER, study_teacher
    from fakd.train import zoo_teacher_key

    given = mmseg_checkpoint(tmp_path / "pspnet.pth")
    spec = load_spec(write_spec(tmp_path, zoo_spec({"source": "mmseg", "checkpoint": given})))
    study = StudyDir(tmp_path / "study")
    write_json(study.marker, {"format": 2, "name": "tiny"})
    logs: list[str] = []
    record = study_teacher(study, spec, logs.append)
    assert record.path == GIVEN_TEACHER and digest(study.path(GIVEN_TEACHER)) == digest(given)
    assert record.zoo == "mmseg" and record.source == given
    cfg = spec.run_config("kd")
    assert record.key == zoo_teacher_key(cfg, given)
    assert record.metrics["val_miou"] == pytest.approx(reference_miou(load_mmseg(given), cfg), abs=1e-12)
    assert study.metadata()["teacher"] == json.loads(json.dumps(record.to_json()))
    assert "teacher mmseg:pspnet ready" in logs[-1]

    monkeypatch.setattr("fakd.train.evaluate_teacher", lambda *a, **k: pytest.fail("evaluated twice"))
    assert study_teacher(study, spec, logs.append) == StudyTeacher.from_json(study.metadata()["teacher"]) == record
    # a trial loads the teacher from the study's copy
    artifact = TrialContext(str(study.root), record).teacher_artifact()
    assert isinstance(load_teacher(artifact, cfg, NUM_CLASSES), ZooTeacher)


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_with_a_zoo_teacher_searches_and_retrains(tmp_path: Path, ray_local: Any, capsys) -> None:
    """Each trial reads its run back from the study's records: a zoo teacher's run has every default of the
    timm-only keys written out, which must read as the same run, not as keys that have no effect."""
    from fakd.results import open_study_dir, read_trials
    from fakd.study import sweep

    raw = zoo_spec({"source": "mmseg", "checkpoint": mmseg_checkpoint(tmp_path / "pspnet.pth")})
    raw.update(arms=["baseline", "kd"], search={"num_samples": 1, "max_concurrent": 1, "add_on": "joint",
                                                "scheduler": "none", "retrain_seeds": 1})
    study = sweep(str(write_spec(tmp_path, raw)), storage=tmp_path / "studies")
    records = read_trials(open_study_dir(study.root))
    assert sorted((r.phase, r.arm, r.state) for r in records) == [
        ("retrain", "baseline", "COMPLETE"), ("retrain", "kd", "COMPLETE"),
        ("search", "baseline", "COMPLETE"), ("search", "kd", "COMPLETE")]
    assert all(r.config.teacher.source == "mmseg" for r in records)
    capsys.readouterr()
    assert main(["export", str(study.root), "--format", "csv"]) == 0
    assert "mmseg:pspnet" in capsys.readouterr().out
