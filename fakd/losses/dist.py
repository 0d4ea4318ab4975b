"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"): match the *relations*
of the teacher's probabilities rather than the probabilities themselves.

With Y_s = softmax(z_s / τ) and Y_t = softmax(z_t / τ) as N × C matrices (a row per sample, a column per class):

    inter = 1 − mean_i ρ(Y_s[i, :], Y_t[i, :])     (each sample's ranking of the classes)
    intra = 1 − mean_j ρ(Y_s[:, j], Y_t[:, j])     (each class's ranking of the samples)
    DIST  = τ² (β · inter + γ · intra)

where ρ is Pearson's correlation. For segmentation every pixel of the batch is a sample (N = B·H·W), so the intra
term compares how each class ranks the pixels of the whole batch.
"""

from __future__ import annotations

import torch

from fakd.losses.kd import check_logits, check_temperature, resize_teacher

EPS = 1e-8
"""Added to the norms of the centred vectors: a constant row or column (no variation) has correlation 0, not NaN."""


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation of each row of `a` with the same row of `b` (N × C → N)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
              beta: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """DIST between segmentation logits (B, C, H, W), every pixel a sample; a scalar. The teacher's logits are
    resized to the student's, as for KD."""
    check_logits(student_logits, teacher_logits)
    check_temperature(temperature)
    teacher_logits = resize_teacher(teacher_logits, student_logits.shape[-2:])
    classes = student_logits.shape[1]
    student = torch.softmax(student_logits.float() / temperature, dim=1).movedim(1, -1).reshape(-1, classes)
    teacher = torch.softmax(teacher_logits.float() / temperature, dim=1).movedim(1, -1).reshape(-1, classes)
    inter = 1 - pearson_rows(student, teacher).mean()
    intra = 1 - pearson_rows(student.T, teacher.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)
