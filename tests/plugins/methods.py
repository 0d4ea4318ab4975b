"""Distillation methods as a user's own package would declare them (`methods.<name>.loss: tests.plugins.methods:…`),
and broken ones that preflight must refuse."""

import torch

from fakd.losses.kd import resize_teacher
from fakd.losses.methods import DistillInputs


def kd_like(inputs: DistillInputs, *, temperature: float = 1.0) -> torch.Tensor:
    """Pixel KD written independently of fakd.losses.kd: T² · mean over pixels of KL(teacher ‖ student)."""
    teacher = resize_teacher(inputs.teacher_logits, tuple(inputs.student_logits.shape[-2:]))
    p = torch.softmax(teacher / temperature, dim=1)
    log_ratio = torch.log_softmax(teacher / temperature, dim=1) - torch.log_softmax(
        inputs.student_logits / temperature, dim=1)
    return temperature**2 * (p * log_ratio).sum(1).mean()


def feature_energy(inputs: DistillInputs, *, target: float = 0.0) -> torch.Tensor:
    """A loss on the student's features alone: (mean squared feature − target)²."""
    return (inputs.student_features.pow(2).mean() - target) ** 2


def no_params(inputs: DistillInputs) -> torch.Tensor:
    return inputs.student_logits.mean()


def per_pixel(inputs: DistillInputs) -> torch.Tensor:
    return inputs.student_logits.mean(1)


def not_a_number(inputs: DistillInputs) -> torch.Tensor:
    return inputs.student_logits.sum() * float("nan")


def a_float(inputs: DistillInputs) -> float:
    return 1.0


def detached(inputs: DistillInputs) -> torch.Tensor:
    return inputs.student_logits.detach().mean()


def raises(inputs: DistillInputs) -> torch.Tensor:
    raise RuntimeError("shapes do not match")


NOT_CALLABLE = 3
