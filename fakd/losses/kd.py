"""Plain logit distillation losses: pixel-wise KD and channel-wise distillation (CWD)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_teacher(teacher_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize (align_corners=False) teacher logits N×C×h'×w' to ``size`` if they differ."""
    if tuple(teacher_logits.shape[-2:]) == tuple(size):
        return teacher_logits
    return F.interpolate(teacher_logits, size=size, mode="bilinear", align_corners=False)


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-resize labels N×H×W to ``size`` (no-op when the size already matches)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].to(labels.dtype)


def check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Raise ValueError unless both logits are N×C×h×w with the same N and C."""
    if student_logits.dim() != 4 or teacher_logits.dim() != 4:
        raise ValueError("logits must be N×C×h×w tensors")
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "logits differ in batch size or number of classes"
        )


def check_temperature(temperature: float) -> None:
    """Raise ValueError for a non-positive temperature."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def pixel_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T² · mean over the N·h·w pixels of KL(softmax(t/T) ‖ softmax(s/T)) over the class dim."""
    check_logits(student_logits, teacher_logits)
    check_temperature(temperature)
    teacher_logits = resize_teacher(teacher_logits, student_logits.shape[-2:])
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    pixels = student_logits.shape[0] * student_logits.shape[2] * student_logits.shape[3]
    return temperature**2 * kl / pixels


def channel_wise_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T² · mean over the N·C channel maps of KL(softmax_x(t_c/T) ‖ softmax_x(s_c/T))."""
    check_logits(student_logits, teacher_logits)
    check_temperature(temperature)
    teacher_logits = resize_teacher(teacher_logits, student_logits.shape[-2:])
    log_q = F.log_softmax(student_logits.flatten(2) / temperature, dim=2)
    log_p = F.log_softmax(teacher_logits.flatten(2) / temperature, dim=2)
    kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    maps = student_logits.shape[0] * student_logits.shape[1]
    return temperature**2 * kl / maps
