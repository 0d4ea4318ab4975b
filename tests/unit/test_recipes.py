"""The ready-to-run recipes in studies/ validate and pass preflight (a model-zoo teacher replaced by a tiny synthetic
checkpoint in the same key layout), and local pretrained weights reach the model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import TINY_SPEC, write_spec
from test_datasets import make_ade20k, make_camvid, make_cityscapes, make_voc
from test_zoo_teachers import lraspp_checkpoint, mmseg_checkpoint

from fakd.config import ZOO_SOURCES
from fakd.errors import UserError
from fakd.preflight import preflight
from fakd.spec import load_spec
from fakd.train.teacher import build_model
from fakd.vocab import DEFAULT_ARMS

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SPECS = sorted(STUDIES.glob("*.yaml"))
# dataset -> (training crop, iterations, batch size)
RECIPES = {
    "cityscapes": ((512, 1024), 40000, 16),
    "voc": ((512, 512), 20000, 16),
    "ade20k": ((512, 512), 40000, 16),
    "camvid": ((360, 480), 10000, 8),
}


MAKERS = {"cityscapes": make_cityscapes, "voc": lambda root: make_voc(root, sbd=True), "ade20k": make_ade20k,
          "camvid": make_camvid}


def dataset_root(path: Path, tmp_path: Path) -> Path:
    """A tiny tree in the recipe's dataset layout (spec validation checks the layout)."""
    name = yaml.safe_load(path.read_text())["data"]["name"]
    if name in MAKERS:
        MAKERS[name](tmp_path)
    return tmp_path


def recipe_overrides(path: Path, tmp_path: Path, teacher_classes: int | None = None) -> list[str]:
    """data.root at a fixture tree; a zoo teacher's checkpoint at a tiny synthetic one (mmseg key layout, or a
    torchvision state dict) with the dataset's class count unless `teacher_classes` says otherwise."""
    overrides = [f"data.root={dataset_root(path, tmp_path)}"]
    teacher = yaml.safe_load(path.read_text())["teacher"]
    if teacher.get("source", "timm") in ZOO_SOURCES:
        classes = teacher_classes or preflight(load_spec(path, overrides), teacher_checkpoint=False).num_classes
        file = tmp_path / "zoo_teacher.pth"
        if teacher["source"] == "mmseg":
            mmseg_checkpoint(file, num_classes=classes)
        else:
            lraspp_checkpoint(file, num_classes=classes)
        overrides.append(f"teacher.checkpoint={file}")
    return overrides


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_in_studies_validates(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path, recipe_overrides(path, tmp_path))
    assert spec.defaults.data.root == str(tmp_path)
    facts = preflight(spec)
    assert facts.num_classes == len(facts.class_names) >= 2


def test_mmseg_recipe_is_the_published_cwd_setting(tmp_path: Path) -> None:
    path = STUDIES / "cityscapes_mmseg.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["teacher"]["checkpoint"].startswith("/data/checkpoints/pspnet_r101-d8_512x1024_80k_cityscapes")
    spec = load_spec(path, recipe_overrides(path, tmp_path))
    run = spec.defaults
    assert (run.teacher.source, run.teacher.output_stride) == ("mmseg", 8)
    assert (run.student.backbone, run.student.head, run.student.output_stride) == ("resnet18d", "psp", 8)
    assert run.data.name == "cityscapes" and run.data.crop_size == (512, 1024) and run.train.iters == 80000
    assert run.train.batch_size * run.train.accumulate in (8, 16)
    assert tuple(spec.settings.arms) == ("kd", "kd+fakd", "cwd", "cwd+fakd")
    assert (run.loss.cwd.weight, run.loss.cwd.temperature, run.train.lr, run.train.weight_decay) == (5.0, 1.0, 0.01,
                                                                                                    0.0005)
    # a teacher of another dataset (here 5 classes) is refused before any work, naming the file and both counts
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UserError) as info:
        preflight(load_spec(path, recipe_overrides(path, other, teacher_classes=5)))
    assert info.value.key == "teacher.checkpoint" and "for 5 classes" in info.value.message
    assert "the dataset has 19" in info.value.message and str(other / "zoo_teacher.pth") in info.value.message


def test_a_root_in_the_wrong_layout_is_rejected_by_preflight_not_by_loading(tmp_path: Path) -> None:
    from fakd.errors import UserError

    make_camvid(tmp_path)
    spec = load_spec(STUDIES / "cityscapes.yaml", [f"data.root={tmp_path}"])  # loading a spec is pure
    with pytest.raises(UserError, match="data.root") as caught:
        preflight(spec)
    assert "leftImg8bit" in str(caught.value) and str(STUDIES / "cityscapes.yaml") in str(caught.value)


@pytest.mark.parametrize("dataset", RECIPES)
def test_dataset_recipes_search_every_arm_at_the_usual_settings(dataset: str, tmp_path: Path) -> None:
    path = STUDIES / f"{dataset}.yaml"
    assert path in SPECS
    spec = load_spec(path, [f"data.root={dataset_root(path, tmp_path)}"])
    crop, iters, batch = RECIPES[dataset]
    run = spec.defaults
    assert yaml.safe_load(path.read_text())["data"]["root"] == f"/data/{dataset}" and run.data.name == dataset
    assert tuple(spec.settings.arms) == DEFAULT_ARMS
    assert spec.space["loss.fakd.max_strength"].bounds == (0.0, 10.0)
    assert {"loss.kd.weight", "loss.kd.temperature", "loss.cwd.weight", "loss.cwd.temperature"} <= set(spec.space)
    assert spec.space["student.backbone"].bounds == ("resnet18", "mobilenetv2_100")
    assert spec.space["train.lr"].kind == "loguniform" and spec.space["train.lr"].bounds == (0.01, 0.02)
    assert (run.data.crop_size, run.train.iters, run.train.batch_size) == (crop, iters, batch)
    assert run.train.eval_every == iters // 10 and run.train.optimizer == "sgd"
    assert run.teacher.backbone == "resnet101" and run.teacher.head == run.student.head == "deeplabv3"
    assert run.teacher.output_stride == run.student.output_stride == 8
    assert run.teacher.pretrained is False and run.student.pretrained is False and run.teacher.checkpoint is None
    assert spec.settings.search.retrain_seeds == 3 and spec.settings.search.num_samples == 8
    assert (spec.settings.resources.cpu, spec.settings.resources.gpu) == (8, 1)


def test_student_loads_pretrained_backbone_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    saved = timm.create_model("test_resnet").state_dict()
    weights = tmp_path / "weights.pth"
    torch.save(saved, weights)
    raw = copy.deepcopy(TINY_SPEC)
    raw["student"] = {**raw["student"], "backbone": "test_resnet", "pretrained": str(weights)}
    spec = load_spec(write_spec(tmp_path, raw))
    assert spec.defaults.student.pretrained == str(weights)

    loaded = build_model(spec.defaults.student, num_classes=4, seed=0).backbone.state_dict()
    random = build_model(spec.defaults.student, num_classes=4, seed=0, pretrained=False).backbone.state_dict()
    assert set(loaded) <= set(saved) and "layer1.0.conv1.weight" in loaded
    for key, tensor in loaded.items():
        assert torch.equal(tensor, saved[key]), key
    for key in ("conv1.0.weight", "layer1.0.conv1.weight", "layer2.0.conv2.weight"):
        assert not torch.equal(random[key], saved[key]), key
