"""Safety: checkpoints are read without running code, teacher files are checked, and bad data files are named."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_SPEC
from test_datasets import (
    ADE_ROW,
    CAMVID_ROW,
    CITYSCAPES_ROW,
    FIRST_LABEL,
    MAKERS,
    VOC_ROW,
    label_grid,
    save_grey_label,
    save_palette_label,
)

from fakd.config import DataConfig, ModelConfig, RunConfig, TeacherConfig
from fakd.data import get_dataset
from fakd.errors import UserError
from fakd.spec import validate_spec
from fakd.train import ensure_teacher, fit
from fakd.train.checkpoint import capture_rng, load_checkpoint, restore_rng, write_checkpoint
from fakd.train.data import build_splits, train_loader
from fakd.train.teacher import TeacherArtifact, build_model, check_teacher_checkpoint, load_teacher, model_config

NUM_CLASSES = TINY_SPEC["data"]["num_classes"]


class WritesMarker:
    """An object whose unpickling runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def tiny_config(arm: str = "kd") -> RunConfig:
    return validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml").run_config(arm)


def one_line(error: UserError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------------------- trial checkpoints


def test_crafted_payload_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """The control for the tests below: the payload they use is live."""
    marker = tmp_path / "marker"
    torch.save({"model": {"w": torch.ones(1)}, "metrics": WritesMarker(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.read_text() == "code ran"


def test_rng_states_survive_a_checkpoint_read_with_weights_only(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0.0, 1.0), np.random.standard_normal()  # leave a cached Gaussian in both streams
    directory = write_checkpoint({"rng": capture_rng()}, tmp_path, 1)

    def draws() -> list[Any]:
        return [random.random(), random.gauss(0.0, 1.0), np.random.rand(3).tolist(), np.random.standard_normal(),
                torch.rand(3).tolist()]

    expected = draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng(torch.load(directory / "state.pt", weights_only=True)["rng"])
    assert draws() == expected
    restore_rng(load_checkpoint(directory)["rng"])
    assert draws() == expected


def test_trial_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    directory = tmp_path / "work" / "checkpoints" / "iter_0000002"
    directory.mkdir(parents=True)
    torch.save({"iteration": 2, "model": {}, "rng": WritesMarker(marker)}, directory / "state.pt")
    with pytest.raises(UserError, match="Unsupported global") as info:
        load_checkpoint(directory)
    assert str(directory / "state.pt") in one_line(info.value)
    cfg = tiny_config("baseline")
    splits = build_splits(cfg)
    model = build_model(cfg.student, splits.num_classes, 0)
    with pytest.raises(UserError, match="cannot load trial checkpoint"):
        fit(cfg, model, splits, tmp_path / "work", resume_from="latest", progress=False)
    assert not marker.exists()


def test_garbage_trial_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "state.pt").write_bytes(b"\x00not a checkpoint" * 8)
    with pytest.raises(UserError, match="cannot load trial checkpoint") as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path / "state.pt") in one_line(info.value)


# ----------------------------------------------------------------------------------------------- teachers


def save_teacher(path: Path, model_cfg: ModelConfig, num_classes: int = NUM_CLASSES, wrap: bool = True) -> Path:
    """A teacher file as the cache writes it (`wrap`) or a bare state dict."""
    state = build_model(model_cfg, num_classes, seed=1, pretrained=False).state_dict()
    torch.save({"key": "k", "model": state, "num_classes": num_classes, "metrics": {}} if wrap else state, path)
    return path


def with_teacher(cfg: RunConfig, path: Path) -> RunConfig:
    return cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"checkpoint": str(path)})})


def evil_zip(path: Path, marker: Path) -> None:
    torch.save({"model": {"w": torch.ones(1)}, "metrics": WritesMarker(marker)}, path)


def evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(WritesMarker(marker), protocol=2))  # the protocol torch.load reads


def truncated(path: Path, marker: Path) -> None:
    save_teacher(path, model_config(tiny_config().teacher))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_TEACHERS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "code in a checkpoint": (evil_zip, "cannot load teacher checkpoint .*Unsupported global"),
    "code in a bare pickle": (evil_pickle, "cannot load teacher checkpoint .*Unsupported global"),
    "garbage bytes": (lambda path, _: path.write_bytes(b"\x89PNG garbage" * 16), "cannot load teacher checkpoint"),
    "truncated": (truncated, "cannot load teacher checkpoint"),
    "empty file": (lambda path, _: path.write_bytes(b""), "cannot load teacher checkpoint"),
    "no tensors": (lambda path, _: torch.save({"model": {"w": 1}}, path), "entry 'w' is of type int"),
    "plain dict": (lambda path, _: torch.save({"lr": 0.1}, path), "entry 'lr' is of type float"),
    "a list": (lambda path, _: torch.save([torch.ones(1)], path), "found an object of type list"),
}


@pytest.mark.parametrize("kind", BAD_TEACHERS)
def test_bad_teacher_files_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    write, phrase = BAD_TEACHERS[kind]
    path, marker = tmp_path / "teacher.pt", tmp_path / "marker"
    write(path, marker)
    cfg = with_teacher(tiny_config(), path)
    for attempt in (lambda: check_teacher_checkpoint(path, cfg, NUM_CLASSES), lambda: ensure_teacher(cfg, tmp_path)):
        with pytest.raises(UserError, match=phrase) as info:
            attempt()
        assert info.value.key == "teacher.checkpoint" and str(path) in one_line(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("wrap", [True, False], ids=["cache format", "bare state dict"])
def test_teacher_with_another_class_count_is_refused(tmp_path: Path, wrap: bool) -> None:
    cfg = tiny_config()
    path = save_teacher(tmp_path / "teacher.pt", model_config(cfg.teacher), NUM_CLASSES + 1, wrap=wrap)
    with pytest.raises(UserError, match=f"holds a teacher for {NUM_CLASSES + 1} classes but the dataset has 4") as info:
        check_teacher_checkpoint(path, cfg, NUM_CLASSES)
    assert info.value.key == "teacher.checkpoint" and str(path) in one_line(info.value)


def test_teacher_of_another_architecture_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config()
    other_backbone = save_teacher(tmp_path / "student.pt", cfg.student, wrap=False)
    with pytest.raises(UserError, match="does not fit a test_resnet fcn teacher with 4 classes: its keys do not match"):
        check_teacher_checkpoint(other_backbone, cfg, NUM_CLASSES)
    narrow = model_config(cfg.teacher).model_copy(update={"head_channels": 8})
    other_head = save_teacher(tmp_path / "narrow.pt", narrow)
    with pytest.raises(UserError, match=r"narrow.pt does not fit .*: head\..* has shape .* where the teacher needs"):
        check_teacher_checkpoint(other_head, cfg, NUM_CLASSES)
    with pytest.raises(UserError, match="its keys do not match"):
        load_teacher(TeacherArtifact(other_backbone, "external", {}), cfg, NUM_CLASSES)


@pytest.mark.parametrize("wrap", [True, False], ids=["cache format", "bare state dict"])
def test_valid_teacher_passes_and_loads(tmp_path: Path, wrap: bool) -> None:
    cfg = tiny_config()
    path = save_teacher(tmp_path / "teacher.pt", model_config(cfg.teacher), wrap=wrap)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    check_teacher_checkpoint(path, cfg, NUM_CLASSES)
    assert torch.equal(torch.get_rng_state(), before)  # the check leaves the global RNG alone
    artifact = ensure_teacher(with_teacher(cfg, path), tmp_path / "cache")
    assert artifact.path == path and artifact.key == ("k" if wrap else "external")
    teacher = load_teacher(artifact, cfg, NUM_CLASSES)
    expected = build_model(model_config(cfg.teacher), NUM_CLASSES, seed=1, pretrained=False).state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in teacher.state_dict().items())


# --------------------------------------------------------------------------------------------------- data

# dataset -> (its row of known values, values outside its label table, the accepted values as reported)
UNKNOWN = {
    "cityscapes": (CITYSCAPES_ROW, [200, 34], "0-33"),
    "voc": (VOC_ROW, [21, 254], "0-20, 255"),
    "ade20k": (ADE_ROW, [151, 255], "0-150"),
    "camvid": (CAMVID_ROW, [12, 200], "0-11"),
}


def write_label(name: str, path: Path, values: np.ndarray) -> None:
    (save_palette_label if name == "voc" else save_grey_label)(path, values)


def index_of(dataset: Any, label: Path) -> int:
    return next(i for i, (_, path) in enumerate(dataset.pairs) if path == label)


@pytest.mark.parametrize("name", UNKNOWN)
def test_label_values_outside_the_table_are_errors_or_ignored(tmp_path: Path, name: str) -> None:
    (stored, mapped), unknown, accepted = UNKNOWN[name]
    MAKERS[name](tmp_path)
    label = tmp_path / FIRST_LABEL[name]
    values, expected = label_grid(stored, 0), label_grid(mapped, 0)
    values[0, :2], values[3, 5] = unknown, unknown[0]
    expected[0, :2], expected[3, 5] = 255, 255
    write_label(name, label, values)

    strict = get_dataset(name, str(tmp_path), "train")
    with pytest.raises(UserError) as info:
        strict[index_of(strict, label)]
    message = one_line(info.value)
    assert info.value.key == "data.root" and str(label) in message
    assert f"outside the {name} label table: {', '.join(map(str, sorted(unknown)))} (accepted: {accepted})" in message
    assert "data.unknown_labels: ignore" in message

    lenient = get_dataset(name, str(tmp_path), "train", unknown_labels="ignore")
    assert np.array_equal(lenient[index_of(lenient, label)][1].numpy(), expected)


def test_unknown_labels_option_reaches_the_dataset_from_the_config(tmp_path: Path) -> None:
    MAKERS["camvid"](tmp_path)
    label = tmp_path / FIRST_LABEL["camvid"]
    write_label("camvid", label, np.full(label_grid(CAMVID_ROW[0], 0).shape, 250))
    cfg = RunConfig(
        data=DataConfig(name="camvid", root=str(tmp_path), image_size=16),
        teacher=TeacherConfig(backbone="test_resnet"), student=ModelConfig(backbone="test_resnet"), split="val",
    )
    strict = build_splits(cfg).train
    with pytest.raises(UserError, match="values outside the camvid label table: 250"):
        strict[index_of(strict, label)]
    lenient = build_splits(cfg.model_copy(update={"data": cfg.data.model_copy(update={"unknown_labels": "ignore"})}))
    assert (lenient.train[index_of(lenient.train, label)][1] == 255).all()
    synthetic = tiny_config()
    build_splits(synthetic.model_copy(update={"data": synthetic.data.model_copy(update={"unknown_labels": "ignore"})}))


def test_unknown_labels_must_be_error_or_ignore(tmp_path: Path) -> None:
    MAKERS["camvid"](tmp_path)
    with pytest.raises(UserError, match="unknown_labels must be one of error, ignore, got 'drop'") as info:
        get_dataset("camvid", str(tmp_path), "train", unknown_labels="drop")
    assert info.value.key == "data.unknown_labels"


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (dataset, file relative to the root, how it is damaged, what kind of file the error names)
DAMAGED = [
    ("camvid", "train/0001TP_006690.png", cut_in_half, "image file"),
    ("camvid", FIRST_LABEL["camvid"], cut_in_half, "label file"),
    ("voc", "JPEGImages/2007_000032.jpg", cut_in_half, "image file"),
    ("voc", FIRST_LABEL["voc"], cut_in_half, "label file"),
    ("cityscapes", FIRST_LABEL["cityscapes"], lambda path: path.write_bytes(b"not a png" * 10), "label file"),
    ("ade20k", "images/training/ADE_train_00000001.jpg", lambda path: path.write_bytes(b""), "image file"),
]


@pytest.mark.parametrize(("name", "file", "damage", "what"), DAMAGED, ids=[f"{n}:{f}" for n, f, _, _ in DAMAGED])
def test_unreadable_or_truncated_files_are_named(
    tmp_path: Path, name: str, file: str, damage: Callable[[Path], None], what: str
) -> None:
    MAKERS[name](tmp_path)
    path = tmp_path / file
    damage(path)
    dataset = get_dataset(name, str(tmp_path), "train")
    index = next(i for i, pair in enumerate(dataset.pairs) if path in pair)
    with pytest.raises(UserError, match=f"cannot read {what} ") as info:
        dataset[index]
    assert info.value.key == "data.root" and str(path) in one_line(info.value)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_errors_from_loader_workers_stay_one_line_naming_the_file(tmp_path: Path, num_workers: int) -> None:
    """torch re-raises a worker process's error around the worker's traceback: the loader gives the line back."""
    MAKERS["camvid"](tmp_path)
    label = tmp_path / FIRST_LABEL["camvid"]
    cut_in_half(label)
    cfg = RunConfig(
        data=DataConfig(name="camvid", root=str(tmp_path), image_size=16, num_workers=num_workers),
        teacher=TeacherConfig(backbone="test_resnet"), student=ModelConfig(backbone="test_resnet"), split="val",
    )
    splits = build_splits(cfg)
    loader = train_loader(cfg, splits.train, total_iters=len(splits.train.pairs), start_iteration=0)
    with pytest.raises(UserError) as info:
        for _ in loader:
            pass
    assert "cannot read label file" in one_line(info.value) and str(label) in str(info.value)
    assert "DataLoader worker" not in str(info.value) and "Traceback" not in str(info.value)
    # its workers stopped with the error (left to the garbage collector, each waited out a 5 s join timeout)
    assert multiprocessing.active_children() == []
