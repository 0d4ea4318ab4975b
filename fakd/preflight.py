"""Preflight: the checks of everything a spec names outside itself, before any command trains.

`launch.py train`, `sweep`, `resume` and `retrain` run it; `status` and `export` never do (they read the
study directory alone). Each problem is one `UserError` naming the spec file and the key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakd.config import ModelConfig, TeacherConfig
from fakd.errors import UserError
from fakd.spec import StudySpec


@dataclass(frozen=True)
class DataFacts:
    """What the study records about its dataset at creation, so that exports never need the data."""

    num_classes: int
    class_names: list[str]


def preflight(spec: StudySpec, *, teacher_checkpoint: bool = True) -> DataFacts:
    """Check timm names, weight files, the data root and layout, the models and (unless the study holds a
    copy of it already) a given teacher checkpoint."""
    _check_methods(spec)
    _check_backbones(spec)
    for key, model in (("teacher", spec.defaults.teacher), ("student", spec.defaults.student)):
        _check_weights(spec.path, f"{key}.pretrained", model)
    facts = _check_data(spec)
    _check_models(spec, facts.num_classes, teacher_checkpoint)
    return facts


def _check_methods(spec: StudySpec) -> None:
    """Import each plug-in method and call it once on tiny tensors with its default parameters, so that a method
    that would fail in every trial fails here, in one line, before anything trains."""
    if not spec.defaults.methods:
        return
    from fakd.losses.methods import check_method, load_method

    for name, method in spec.defaults.methods.items():
        try:
            check_method(load_method(method.loss), method.params)
        except ValueError as exc:
            raise UserError(f"method {name} ({method.loss}): {exc}", file=spec.path,
                            key=f"methods.{name}.loss") from None


def _check_backbones(spec: StudySpec) -> None:
    import timm  # deferred: importing timm takes a second

    searched = spec.space["student.backbone"].bounds if "student.backbone" in spec.space else ()
    named = [] if spec.defaults.teacher.is_zoo else [("teacher.backbone", spec.defaults.teacher.backbone)]
    named += [("student.backbone", spec.defaults.student.backbone)]
    named += [("student.backbone", name) for name in searched]
    for key, name in named:
        if not isinstance(name, str) or not timm.is_model(name):
            raise UserError(f"{name!r} is not a timm model name{_suggest(name, timm.list_models())}",
                            file=spec.path, key=key)


def _check_weights(file: str, key: str, model: ModelConfig | TeacherConfig) -> None:
    if isinstance(model.pretrained, str) and not Path(model.pretrained).is_file():
        what = "is a directory; name the weights file in it" if Path(model.pretrained).is_dir() else "not found"
        raise UserError(f"weights file {what}: {model.pretrained}", file=file, key=key)


def _check_data(spec: StudySpec) -> DataFacts:
    data = spec.defaults.data
    if data.name != "synthetic":
        if not data.root:
            raise UserError(f"dataset {data.name!r} needs a root directory", file=spec.path, key="data.root")
        if not Path(data.root).is_dir():
            raise UserError(f"data root does not exist: {data.root}", file=spec.path, key="data.root")
    from fakd.train.data import open_dataset  # the layout of both splits, checked before any work starts

    try:
        train = open_dataset(data, "train")
        open_dataset(data, "val")
    except UserError as exc:
        raise exc.located(spec.path) from None
    return DataFacts(int(train.num_classes), [str(name) for name in train.class_names])


def _check_models(spec: StudySpec, num_classes: int, teacher_checkpoint: bool) -> None:
    """Build teacher and student(s) once, so unknown heads, strides or weight files fail before training;
    a given teacher checkpoint must load into the configured teacher with the dataset's class count (a zoo
    teacher: its file is read safely, its architecture built from it, and its class count compared)."""
    from fakd.train import check_models, check_teacher_checkpoint

    check_models(spec.defaults, spec.path, num_classes)
    for name in spec.space["student.backbone"].bounds if "student.backbone" in spec.space else ():
        check_models(spec.run_config(spec.settings.arms[0], {"student.backbone": name}), spec.path, num_classes)
    checkpoint = spec.defaults.teacher.checkpoint
    if checkpoint and teacher_checkpoint:
        if not Path(checkpoint).is_file():
            what = "is a directory; name the checkpoint file in it" if Path(checkpoint).is_dir() else "not found"
            raise UserError(f"teacher checkpoint {what}: {checkpoint}", file=spec.path, key="teacher.checkpoint")
        try:
            check_teacher_checkpoint(Path(checkpoint), spec.defaults, num_classes)
        except UserError as exc:
            raise exc.located(spec.path) from None


def _suggest(name: Any, names: list[str]) -> str:
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
