"""DIST (`fakd.losses.dist_loss`) against its paper's formula: Pearson correlations of the probabilities over the
classes of each pixel (inter) and over the pixels of each class (intra), τ² (β inter + γ intra)."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SPEC
from scipy import stats

from fakd.config import DISTConfig, LossConfig
from fakd.errors import UserError
from fakd.losses import dist_loss
from fakd.losses.monte_carlo import augmented_logits
from fakd.models import SegmenterOutput
from fakd.spec import validate_spec
from fakd.train.objective import SegmentationObjective
from fakd.vocab import ARM_TABLE, DEFAULT_ARMS


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits (1, C, 1, W) whose softmax over C is each given row (one row per pixel)."""
    return torch.tensor(probabilities, dtype=torch.float64).log().T[None, :, None, :]


def test_two_classes_by_hand():
    """With two classes a pixel's correlation is +1 when both rank the classes alike, −1 when not; here pixel 1
    agrees and pixel 2 does not (inter = 1 − 0), and both classes rank the two pixels oppositely (intra = 1 + 1)."""
    student = logits_of([[0.7, 0.3], [0.2, 0.8]])
    teacher = logits_of([[0.6, 0.4], [0.9, 0.1]])
    assert dist_loss(student, teacher).item() == pytest.approx(3.0, abs=1e-6)
    assert dist_loss(student, teacher, beta=2.0, gamma=0.5).item() == pytest.approx(2 * 1 + 0.5 * 2, abs=1e-6)
    assert dist_loss(student, student).item() == pytest.approx(0.0, abs=1e-6)


def test_the_formula_with_scipys_pearson_correlations():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 5, 6, 8, generator=generator, dtype=torch.float64)  # resized to the student's 3 × 4
    temperature, beta, gamma = 2.0, 0.7, 1.3
    resized = torch.nn.functional.interpolate(teacher, size=(3, 4), mode="bilinear", align_corners=False)
    y_s = torch.softmax(student / temperature, 1).movedim(1, -1).reshape(-1, 5).numpy()
    y_t = torch.softmax(resized / temperature, 1).movedim(1, -1).reshape(-1, 5).numpy()
    inter = 1 - np.mean([stats.pearsonr(y_s[i], y_t[i]).statistic for i in range(len(y_s))])
    intra = 1 - np.mean([stats.pearsonr(y_s[:, j], y_t[:, j]).statistic for j in range(5)])
    expected = temperature**2 * (beta * inter + gamma * intra)
    value = dist_loss(student, teacher, temperature=temperature, beta=beta, gamma=gamma)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dist_is_differentiable_and_a_constant_column_gives_no_nan():
    student = torch.zeros(1, 3, 2, 2, requires_grad=True)  # every pixel uniform: no variation anywhere
    teacher = torch.randn(1, 3, 2, 2)
    value = dist_loss(student, teacher)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(student.grad).all()
    with pytest.raises(ValueError):
        dist_loss(student, teacher, temperature=0.0)


def test_the_dist_arm_trains_with_dist_alone_against_baseline():
    loss = LossConfig(dist=DISTConfig(weight=2.0, temperature=3.0, beta=0.5, gamma=1.5))
    dist, kd = loss.for_arm("dist"), loss.for_arm("kd")
    assert (dist.dist.weight, dist.kd.weight, dist.cwd.weight, dist.fakd.enabled) == (2.0, 0.0, 0.0, False)
    assert kd.dist.weight == 0.0 and dist.distills
    assert ARM_TABLE["dist"].base == "baseline" and "dist" not in DEFAULT_ARMS

    objective = SegmentationObjective(dist, num_classes=4, feature_dim=8, total_steps=10)
    generator = torch.Generator().manual_seed(1)
    logits, teacher = torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (2, 16, 16), generator=generator)
    student = SegmenterOutput(logits=logits, features=torch.randn(2, 8, 4, 4, generator=generator))
    total, terms = objective(student, labels, step=0, teacher_logits=teacher)
    expected = dist_loss(logits, teacher, temperature=3.0, beta=0.5, gamma=1.5)
    assert terms["loss_dist"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert total.item() == pytest.approx(terms["loss_ce"].item() + 2.0 * expected.item(), rel=1e-6)
    assert "loss_kd" not in terms and "fakd_strength" not in terms


def test_a_spec_searches_dist_keys_only_where_the_dist_arm_is(tmp_path):
    raw = copy.deepcopy(TINY_SPEC)
    raw["arms"] = ["baseline", "dist"]
    raw["loss"]["dist"] = {"weight": 1.0, "beta": {"uniform": [0.5, 2.0]}, "temperature": 4.0}
    spec = validate_spec(raw, "tiny.yaml")
    assert spec.run_config("dist", {"loss.dist.beta": 1.7}).effective_loss.dist.beta == 1.7
    raw["arms"] = ["baseline", "kd"]
    with pytest.raises(UserError, match="is searched but no arm of this study uses it") as caught:
        validate_spec(raw, "tiny.yaml")
    assert caught.value.key == "loss.dist.beta"
    raw = copy.deepcopy(TINY_SPEC)
    raw.pop("arms")
    assert "dist" not in validate_spec(raw, "tiny.yaml").settings.arms


def dist_fakd_case(samples: int, strength: float) -> tuple[SegmentationObjective, SegmenterOutput, torch.Tensor,
                                                           torch.Tensor, torch.Tensor]:
    loss = LossConfig(dist=DISTConfig(weight=1.0, temperature=2.0),
                      fakd={"max_strength": strength, "schedule": "constant", "samples": samples}).for_arm("dist+fakd")
    objective = SegmentationObjective(loss, num_classes=4, feature_dim=3, total_steps=10)
    generator = torch.Generator().manual_seed(4)
    student = SegmenterOutput(logits=torch.randn(2, 4, 4, 4, generator=generator),
                              features=torch.randn(2, 3, 4, 4, generator=generator))
    teacher = torch.randn(2, 4, 4, 4, generator=generator)
    labels = torch.randint(0, 4, (2, 4, 4), generator=generator)
    weight = torch.randn(4, 3, generator=generator)
    return objective, student, teacher, labels, weight


def test_dist_fakd_averages_dist_over_sampled_feature_augmentations():
    """K copies z + W e, e ~ N(0, λ Σ_y) with Σ_y the objective's running class covariance (updated with this
    batch first), drawn from the global RNG one at a time: the term is DIST's mean over them."""
    assert ARM_TABLE["dist+fakd"].base == "dist" and not ARM_TABLE["dist+fakd"].closed_form
    objective, student, teacher, labels, weight = dist_fakd_case(samples=5, strength=3.0)
    torch.manual_seed(0)
    _, terms = objective(student, labels, step=0, classifier_weight=weight, teacher_logits=teacher)
    covariance = objective.covariance.covariance
    torch.manual_seed(0)
    copies = [augmented_logits(student.logits, labels, weight, covariance, 3.0, 1)[0] for _ in range(5)]
    expected = torch.stack([dist_loss(copy, teacher, temperature=2.0) for copy in copies]).mean()
    assert terms["fakd_strength"] == 3.0
    assert terms["loss_dist"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(expected.item() - dist_loss(student.logits, teacher, temperature=2.0).item()) > 1e-3


def test_dist_fakd_without_augmentation_is_dist():
    objective, student, teacher, labels, weight = dist_fakd_case(samples=3, strength=0.0)
    _, terms = objective(student, labels, step=0, classifier_weight=weight, teacher_logits=teacher)
    assert terms["loss_dist"].item() == pytest.approx(dist_loss(student.logits, teacher, temperature=2.0).item())


def test_the_sample_count_is_a_setting_of_dist_fakd_alone(tmp_path):
    raw = copy.deepcopy(TINY_SPEC)
    raw["arms"] = ["baseline", "dist", "dist+fakd"]
    raw["loss"]["fakd"]["samples"] = {"choice": [2, 8]}
    assert validate_spec(raw, "tiny.yaml").run_config("dist+fakd", {"loss.fakd.samples": 2}).loss.fakd.samples == 2
    raw["arms"] = ["baseline", "kd", "kd+fakd"]
    with pytest.raises(UserError, match="is searched but no arm of this study uses it") as caught:
        validate_spec(raw, "tiny.yaml")
    assert caught.value.key == "loss.fakd.samples"
