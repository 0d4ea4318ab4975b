"""The training objective: CE plus the distillation term an arm switches on (KD, CWD or DIST); where the arm adds
FAKD, KD and CWD as its closed-form bounds and DIST averaged over sampled feature augmentations."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fakd.config import LossConfig
from fakd.losses import (
    ClassCovariance,
    channel_wise_kd,
    dist_loss,
    feature_augmented_cwd,
    feature_augmented_kd,
    pixel_kd,
    strength_at,
)
from fakd.losses.monte_carlo import augmented_copies, expected_loss
from fakd.models import SegmenterOutput
from fakd.vocab import DISTILL_TERMS, IGNORE_INDEX


class SegmentationObjective(nn.Module):
    """CE against the labels, plus KD / CWD against a teacher (as FAKD bounds when FAKD is on).

    The class-conditional covariance of the student's features is a buffer of this module, so it is
    saved and restored with the rest of the training state. `all_reduce` (the element-wise sum over the processes
    of a data-parallel run) pools the covariance's batch statistics over every process.
    """

    def __init__(
        self,
        loss: LossConfig,
        num_classes: int,
        feature_dim: int,
        total_steps: int,
        ignore_index: int = IGNORE_INDEX,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.total_steps = total_steps
        self.ignore_index = ignore_index
        self.covariance = (
            ClassCovariance(num_classes, feature_dim, full=loss.fakd.covariance == "full", all_reduce=all_reduce)
            if loss.fakd.enabled and loss.distills
            else None
        )

    @property
    def needs_teacher(self) -> bool:
        return self.loss.distills

    def strength(self, step: int) -> float:
        fakd = self.loss.fakd
        if self.covariance is None:
            return 0.0
        return strength_at(step, self.total_steps, fakd.max_strength, fakd.schedule)

    def forward(
        self,
        student: SegmenterOutput,
        labels: torch.Tensor,
        step: int,
        classifier_weight: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Total loss and its terms for one batch at iteration `step` (0-based).

        The terms are detached tensors (no device sync in the training step) and the FAKD strength a float.
        """
        logits = student.logits.float()
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        ce = F.cross_entropy(upsampled, labels, ignore_index=self.ignore_index)
        total = self.loss.ce_weight * ce
        terms: dict[str, torch.Tensor | float] = {"loss_ce": ce.detach()}
        if not self.needs_teacher:
            terms["loss"] = total.detach()
            return total, terms
        if teacher_logits is None:
            raise ValueError("this objective distills: pass teacher_logits")
        teacher_logits = teacher_logits.float()
        small_labels = _nearest(labels, logits.shape[-2:])
        augmented = self._augmentation(student, small_labels, step, classifier_weight)
        for name in DISTILL_TERMS:
            term = getattr(self.loss, name)
            if term.weight == 0:
                continue
            value = self._term(name, logits, teacher_logits, term.temperature, augmented)
            total = total + term.weight * value
            terms[f"loss_{name}"] = value.detach()
        if augmented is not None:
            terms["fakd_strength"] = augmented["strength"]
        terms["loss"] = total.detach()
        return total, terms

    def _augmentation(
        self, student: SegmenterOutput, labels: torch.Tensor, step: int, weight: torch.Tensor | None
    ) -> dict | None:
        if self.covariance is None:
            return None
        if weight is None:
            raise ValueError("FAKD needs the student's classifier weight")
        self.covariance.update(student.features.detach().float(), labels)
        return {
            "labels": labels,
            "classifier_weight": weight.detach().float(),
            "class_covariance": self.covariance.covariance,
            "strength": self.strength(step),
        }

    def _term(
        self, name: str, logits: torch.Tensor, teacher: torch.Tensor, temperature: float, augmented: dict | None
    ) -> torch.Tensor:
        if name == "dist":  # no closed-form FAKD bound: averaged over sampled augmentations
            dist = self.loss.dist

            def method(student: torch.Tensor) -> torch.Tensor:
                return dist_loss(student, teacher, temperature=temperature, beta=dist.beta, gamma=dist.gamma)

            if augmented is None:
                return method(logits)
            copies = augmented_copies(logits, augmented["labels"], augmented["classifier_weight"],
                                      augmented["class_covariance"], augmented["strength"], self.loss.fakd.samples,
                                      ignore_index=self.ignore_index)
            return expected_loss(method, copies)
        if augmented is None:
            plain = pixel_kd if name == "kd" else channel_wise_kd
            return plain(logits, teacher, temperature=temperature)
        bound = feature_augmented_kd if name == "kd" else feature_augmented_cwd
        return bound(
            logits,
            teacher,
            augmented["labels"],
            augmented["classifier_weight"],
            augmented["class_covariance"],
            augmented["strength"],
            temperature=temperature,
            ignore_index=self.ignore_index,
            form=self.loss.fakd.form,
        )


def _nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
