"""The training objective: CE plus the distillation method an arm switches on (KD, CWD, DIST or a spec's plug-in),
every one through `fakd.losses.methods`' interface; where the arm adds FAKD, KD and CWD as their closed-form bounds
and any other method averaged over sampled feature augmentations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fakd.config import LossConfig, MethodConfig
from fakd.losses import ClassCovariance, feature_augmented_cwd, feature_augmented_kd, strength_at
from fakd.losses.kd import resize_labels
from fakd.losses.methods import BUILT_IN, DistillInputs, Method, load_method
from fakd.losses.monte_carlo import augmented_inputs, expected_loss
from fakd.models import SegmenterOutput
from fakd.vocab import CLOSED_FORM_TERMS, DISTILL_TERMS, IGNORE_INDEX

BOUNDS = {"kd": feature_augmented_kd, "cwd": feature_augmented_cwd}
"""FAKD's closed-form bounds, by the built-in method they bound (`fakd.vocab.CLOSED_FORM_TERMS`)."""
assert set(BOUNDS) == set(CLOSED_FORM_TERMS)


@dataclass(frozen=True)
class Term:
    """One distillation term of the objective: a method, its weight and its parameters."""

    name: str
    weight: float
    method: Method
    params: dict[str, Any]


def distill_terms(loss: LossConfig, methods: Mapping[str, MethodConfig] = {}) -> list[Term]:  # noqa: B006
    """The terms with a positive weight: the built-in ones of `loss` (`loss.<name>`, their weight aside as params),
    then the plug-in `methods` (imported here, so on the process that trains)."""
    terms = [Term(name, config.weight, BUILT_IN[name], config.model_dump(exclude={"weight"}))
             for name in DISTILL_TERMS if (config := getattr(loss, name)).weight > 0]
    for name, config in methods.items():
        if config.weight > 0:
            try:
                method = load_method(config.loss)
            except ValueError as exc:
                raise ValueError(f"methods.{name}.loss: {exc}") from None
            terms.append(Term(name, config.weight, method, dict(config.params)))
    return terms


class SegmentationObjective(nn.Module):
    """CE against the labels, plus the arm's distillation terms against a teacher (under FAKD as their bounds or
    sampled expectations).

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
        methods: Mapping[str, MethodConfig] = {},  # noqa: B006 - read only
    ) -> None:
        super().__init__()
        self.loss = loss
        self.total_steps = total_steps
        self.ignore_index = ignore_index
        self.terms = distill_terms(loss, methods)
        self.covariance = (
            ClassCovariance(num_classes, feature_dim, full=loss.fakd.covariance == "full", all_reduce=all_reduce)
            if loss.fakd.enabled and self.terms
            else None
        )

    @property
    def needs_teacher(self) -> bool:
        return bool(self.terms)

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
        teacher_features: torch.Tensor | None = None,
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
        inputs = DistillInputs(logits, teacher_logits.float(), resize_labels(labels, tuple(logits.shape[-2:])),
                               student.features.float(), teacher_features, self.ignore_index)
        augmentation = self._augmentation(inputs, step, classifier_weight)
        for term in self.terms:
            value = self._term(term, inputs, augmentation)
            total = total + term.weight * value
            terms[f"loss_{term.name}"] = value.detach()
        if augmentation is not None:
            terms["fakd_strength"] = augmentation["strength"]
        terms["loss"] = total.detach()
        return total, terms

    def _augmentation(self, inputs: DistillInputs, step: int, weight: torch.Tensor | None) -> dict | None:
        if self.covariance is None:
            return None
        if weight is None:
            raise ValueError("FAKD needs the student's classifier weight")
        self.covariance.update(inputs.student_features.detach(), inputs.labels)
        return {
            "classifier_weight": weight.detach().float(),
            "class_covariance": self.covariance.covariance,
            "strength": self.strength(step),
        }

    def _term(self, term: Term, inputs: DistillInputs, augmentation: dict | None) -> torch.Tensor:
        if augmentation is None:
            return term.method(inputs, **term.params)
        if term.name in BOUNDS:  # FAKD's closed form (a plug-in's name is never a built-in's)
            return BOUNDS[term.name](inputs.student_logits, inputs.teacher_logits, inputs.labels,
                                     augmentation["classifier_weight"], augmentation["class_covariance"],
                                     augmentation["strength"], temperature=term.params["temperature"],
                                     ignore_index=self.ignore_index, form=self.loss.fakd.form)
        copies = augmented_inputs(inputs, augmentation["classifier_weight"], augmentation["class_covariance"],
                                  augmentation["strength"], self.loss.fakd.samples)
        return expected_loss(lambda copy: term.method(copy, **term.params), copies)
