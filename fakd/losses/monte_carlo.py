"""Feature augmentation by sampling: what FAKD's closed form spares, for any distillation loss.

FAKD moves the student's feature a at a pixel of class y to a + e with e ~ N(0, λ Σ_y); through the final 1×1
classifier the logits move by W e. `augmented_logits` draws K such copies of the logits. Averaging a loss over them
(`expected_loss`) estimates the expected loss under augmentation, which is what feature augmentation asks to minimise
for any method. For KD and CWD the closed-form bound is an upper bound of that expectation (Jensen), so the average
stays below it. `kd_bound_estimate` and `cwd_bound_estimate` sample inside the bound's log-sum-exp instead: the
Gaussian expectation of each exponential is replaced by a K-sample mean, and the estimate tends to the closed form as
K grows (its error falls as 1/√K).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fakd.losses.kd import check_logits, check_temperature, resize_labels, resize_teacher
from fakd.losses.methods import DistillInputs
from fakd.vocab import IGNORE_INDEX


class _Augmentation:
    """What every sampled copy of a batch's logits shares: the per-pixel factor that turns standard normal draws ε
    (…×M×D) into features moves e ~ N(0, λ Σ_y) (zero at ignore pixels), and the classifier weight W."""

    def __init__(self, student_logits: Tensor, labels: Tensor, classifier_weight: Tensor, class_covariance: Tensor,
                 strength: float, ignore_index: int) -> None:
        self.shape = student_logits.shape
        flat = resize_labels(labels, tuple(self.shape[-2:])).reshape(-1).to(student_logits.device)
        kept = (flat != ignore_index)[:, None]
        rows = flat.masked_fill(~kept[:, 0], 0).long()
        self.weight = classifier_weight.detach().to(student_logits.dtype)
        covariance = class_covariance.detach().to(student_logits.dtype) * strength
        self.diagonal = covariance.dim() == 2
        if self.diagonal:
            self.factor = covariance.clamp(min=0).sqrt()[rows] * kept  # M×D standard deviations
        else:  # Σ = V diag(s) Vᵀ, so V diag(√s) ε has covariance Σ even where Σ is singular
            values, vectors = torch.linalg.eigh(covariance)
            self.factor = (vectors * values.clamp(min=0).sqrt()[:, None, :])[rows] * kept[:, :, None]  # M×D×D

    def draws(self, samples: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(samples, self.factor.shape[0], self.weight.shape[1], generator=generator,
                           dtype=self.weight.dtype, device=self.weight.device)

    def feature_shift(self, draws: Tensor) -> Tensor:
        """K×M×D: the features' moves e for the draws ε (K×M×D), a row per pixel."""
        return draws * self.factor if self.diagonal else torch.einsum("mde,kme->kmd", self.factor, draws)

    def logit_shift(self, noise: Tensor) -> Tensor:
        """K×N×C×h×w: W e for the features' moves e (K×M×D)."""
        n, classes, h, w = self.shape
        return (noise @ self.weight.t()).view(-1, n, h, w, classes).movedim(-1, 2).contiguous()

    def moves(self, samples: int, generator: torch.Generator | None) -> Iterator[Tensor]:
        """`samples` features' moves e (1×M×D each), drawn one at a time as they are asked for."""
        _check_samples(samples)
        for _ in range(samples):
            yield self.feature_shift(self.draws(1, generator))

    def as_maps(self, noise: Tensor) -> Tensor:
        """K×N×D×h×w: the features' moves e (K×M×D) laid out as feature maps."""
        n, _, h, w = self.shape
        return noise.view(-1, n, h, w, noise.shape[-1]).movedim(-1, 2)


def _check_samples(samples: int) -> None:
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")


def augmented_logits(student_logits: Tensor, labels: Tensor, classifier_weight: Tensor, class_covariance: Tensor,
                     strength: float, samples: int, *, ignore_index: int = IGNORE_INDEX,
                     generator: torch.Generator | None = None) -> Tensor:
    """K×N×C×h×w logits z + W e_k, with e_k ~ N(0, λ Σ_y) drawn independently for every pixel and sample.

    ``labels`` N×H×W (nearest-resized to h×w), ``classifier_weight`` W C×D, ``class_covariance`` C×D (diagonal) or
    C×D×D (full; positive semi-definite), ``strength`` λ ≥ 0. Pixels labelled ``ignore_index`` are not moved. W and
    Σ are detached (as in the bound); gradients reach the logits."""
    _check_samples(samples)
    augmentation = _Augmentation(student_logits, labels, classifier_weight, class_covariance, strength, ignore_index)
    noise = augmentation.feature_shift(augmentation.draws(samples, generator))
    return student_logits[None] + augmentation.logit_shift(noise)


def augmented_copies(student_logits: Tensor, labels: Tensor, classifier_weight: Tensor, class_covariance: Tensor,
                     strength: float, samples: int, *, ignore_index: int = IGNORE_INDEX,
                     generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """The copies of `augmented_logits` one at a time (N×C×h×w each, drawn as they are asked for), so that K copies
    never coexist; what they share is computed once."""
    augmentation = _Augmentation(student_logits, labels, classifier_weight, class_covariance, strength, ignore_index)
    for noise in augmentation.moves(samples, generator):
        yield student_logits + augmentation.logit_shift(noise)[0]


def augmented_inputs(
    inputs: DistillInputs,
    classifier_weight: Tensor,
    class_covariance: Tensor,
    strength: float,
    samples: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[DistillInputs]:
    """K copies of a method's inputs, one at a time, each with the student's features moved by e ~ N(0, λ Σ_y) and
    its logits by W e, the same draws as `augmented_copies` (teacher, labels and everything else unchanged)."""
    logits, features = inputs.student_logits, inputs.student_features
    if features.shape[0] != logits.shape[0] or features.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"student features {tuple(features.shape)} and logits {tuple(logits.shape)} differ in batch "
                         "size or resolution: the features must be the classifier's input")
    augmentation = _Augmentation(logits, inputs.labels, classifier_weight, class_covariance, strength,
                                 inputs.ignore_index)
    for noise in augmentation.moves(samples, generator):
        yield replace(inputs, student_logits=logits + augmentation.logit_shift(noise)[0],
                      student_features=features + augmentation.as_maps(noise)[0].to(features.dtype))


def expected_loss(loss: Callable[..., Tensor], augmented: Iterable[Any], *args: Any, **kwargs: Any) -> Tensor:
    """The mean of ``loss(copy, *args, **kwargs)`` over augmented copies: of the logits (a K×N×C×h×w tensor, or an
    iterable of N×C×h×w copies) or of a method's inputs (`augmented_inputs`), drawn one at a time so that K copies
    never coexist."""
    return torch.stack([loss(copy, *args, **kwargs) for copy in augmented]).mean()


def kd_bound_estimate(augmented: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """FAKD's pixel-KD bound with its Gaussian expectation sampled: T² · mean over pixels of
    −H(p) + Σ_j p_j log( mean_k Σ_i exp((z̃ᵏ_i − z̃ᵏ_j)/T) ), p = softmax(z_t/T). Tends to `feature_augmented_kd`."""
    check_temperature(temperature)
    student = augmented[0]
    teacher = resize_teacher(teacher_logits, tuple(student.shape[-2:]))
    check_logits(student, teacher)
    scaled = augmented / temperature
    log_sums = torch.logsumexp(scaled, dim=2, keepdim=True) - scaled  # K×N×C×h×w: log Σ_i exp((z̃_i − z̃_j)/T)
    inner = torch.logsumexp(log_sums, dim=0) - math.log(augmented.shape[0])
    log_p = F.log_softmax(teacher / temperature, dim=1)
    return temperature**2 * (log_p.exp() * (log_p + inner)).sum(1).mean()


def cwd_bound_estimate(augmented: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """FAKD's channel-wise bound with its Gaussian expectation sampled: T² · mean over the N·C channel maps of
    Σ_x q log q − Σ_x q s_c/T + log( mean_k Σ_x exp(s̃ᵏ_c(x)/T) ), q = softmax_x(t_c/T). Tends to
    `feature_augmented_cwd` (the noise has mean zero, so the linear term takes the mean logits)."""
    check_temperature(temperature)
    student = augmented.mean(0)
    teacher = resize_teacher(teacher_logits, tuple(student.shape[-2:]))
    check_logits(student, teacher)
    log_q = F.log_softmax(teacher.flatten(2) / temperature, dim=2)  # N×C×hw
    linear = (log_q.exp() * (log_q - augmented.flatten(3) / temperature)).sum(3)  # K×N×C
    log_sums = torch.logsumexp(torch.logsumexp(augmented.flatten(3) / temperature, dim=3), dim=0)
    per_map = linear.mean(0) + log_sums - math.log(augmented.shape[0])
    return temperature**2 * per_map.mean()
