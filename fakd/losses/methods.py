"""Distillation methods behind one interface: the built-in ones (KD, CWD, DIST) and a spec's own plug-ins.

A method is a callable `loss(inputs: DistillInputs, **params) -> Tensor` returning a scalar. A spec declares a
plug-in by import path, with its weight and its own parameters (fixed values or search distributions):

    methods:
      mine: {loss: "mypkg.losses:relation_loss", weight: 1.0, params: {beta: {uniform: [0.5, 2.0]}, tau: 4.0}}

which adds the arms `mine` (compared with `baseline`) and `mine+fakd` (compared with `mine`). Under FAKD a method
with a closed-form bound (KD, CWD) is replaced by it; any other is averaged over sampled feature augmentations
(`fakd.losses.monte_carlo.augmented_inputs`). The module must import wherever a trial runs: see the README.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fakd.config import import_path_parts
from fakd.losses.dist import dist_loss
from fakd.losses.kd import channel_wise_kd, pixel_kd
from fakd.vocab import IGNORE_INDEX


@dataclass(frozen=True)
class DistillInputs:
    """What a distillation method sees of one batch.

    `student_logits` N×C×h×w and `student_features` N×D×h×w (the classifier's input) at the student's output
    resolution; `teacher_logits` N×C×h'×w' (resize them as needed: `fakd.losses.kd.resize_teacher`);
    `teacher_features` the teacher's classifier input, or None for a model-zoo teacher; `labels` N×h×w at the
    student's resolution, `ignore_index` where no class is known.
    """

    student_logits: Tensor
    teacher_logits: Tensor
    labels: Tensor
    student_features: Tensor
    teacher_features: Tensor | None = None
    ignore_index: int = IGNORE_INDEX


Method = Callable[..., Tensor]
"""`method(inputs: DistillInputs, **params) -> Tensor` (a scalar)."""


def kd(inputs: DistillInputs, *, temperature: float = 1.0) -> Tensor:
    """Pixel-wise KD (`fakd.losses.kd.pixel_kd`)."""
    return pixel_kd(inputs.student_logits, inputs.teacher_logits, temperature=temperature)


def cwd(inputs: DistillInputs, *, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation (`fakd.losses.kd.channel_wise_kd`)."""
    return channel_wise_kd(inputs.student_logits, inputs.teacher_logits, temperature=temperature)


def dist(inputs: DistillInputs, *, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> Tensor:
    """DIST's inter- and intra-class relation loss (`fakd.losses.dist.dist_loss`)."""
    return dist_loss(inputs.student_logits, inputs.teacher_logits, temperature=temperature, beta=beta, gamma=gamma)


BUILT_IN: dict[str, Method] = {"kd": kd, "cwd": cwd, "dist": dist}
"""The built-in methods, by the name of their `loss.<name>` section (`fakd.vocab.DISTILL_TERMS`)."""


def load_method(path: str) -> Method:
    """The callable at `module.path:attribute`; a ValueError saying what is wrong otherwise."""
    module_name, attribute = import_path_parts(path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of the user's module is theirs to see
        raise ValueError(f"cannot import {module_name} ({type(exc).__name__}: {exc}); install the package where "
                         "trials run, or put it on PYTHONPATH") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name} has no {attribute}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{path} is a {type(target).__name__}, not a callable")
    return target


def check_method(method: Method, params: Mapping[str, Any], *, classes: int = 3) -> None:
    """Call `method` once on tiny random tensors with `params` and its gradient; a ValueError unless it takes
    (inputs, **params) and returns a finite scalar with a gradient to the student's logits and features."""
    try:
        inspect.signature(method).bind(None, **params)
    except TypeError as exc:
        raise ValueError(f"its signature does not take (inputs, **params) for params {sorted(params)}: {exc}") \
            from None
    except ValueError:  # no signature to read (a builtin): the call below tells
        pass
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, classes, 4, 4, generator=generator, requires_grad=True)
    features = torch.randn(2, 5, 4, 4, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (2, 4, 4), generator=generator)
    labels[0, 0, 0] = IGNORE_INDEX
    inputs = DistillInputs(logits, torch.randn(2, classes, 8, 8, generator=generator), labels, features,
                           torch.randn(2, 7, 8, 8, generator=generator))
    try:
        value = method(inputs, **params)
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported as one line
        raise ValueError(f"fails on a 2×{classes}×4×4 batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, Tensor):
        raise ValueError(f"returns a {type(value).__name__}, not a torch.Tensor")
    if value.numel() != 1:
        raise ValueError(f"returns a tensor of shape {tuple(value.shape)}, not a scalar")
    if not torch.isfinite(value).all():
        raise ValueError(f"returns {value.item()} on a 2×{classes}×4×4 batch")
    if not value.requires_grad:
        raise ValueError("returns a tensor with no gradient to the student's logits or features")
