"""fakd.losses.monte_carlo: sampled feature augmentations have the covariance FAKD assumes; the sampled bounds tend
to the closed forms at the Monte-Carlo rate; the expected loss they sample stays below the bound."""

import math

import pytest
import torch
from test_losses import IGNORE, fakd, fcwd, full_from, make_case

from fakd.losses import dist_loss, pixel_kd
from fakd.losses.monte_carlo import augmented_logits, cwd_bound_estimate, expected_loss, kd_bound_estimate


def augment(case: dict, strength: float, samples: int, seed: int) -> torch.Tensor:
    return augmented_logits(case["student"], case["labels"], case["weight"], case["covariance"], strength, samples,
                            generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("full", [False, True])
def test_the_logits_move_by_w_e_with_the_class_covariance(full):
    case = make_case(batch=1, classes=4, height=2, width=3, dim=3, full=full, ignore_fraction=0.3, seed=5)
    strength = 2.0
    shift = (augment(case, strength, 40_000, seed=0) - case["student"][None]).movedim(2, -1).reshape(40_000, -1, 4)
    labels = case["labels"].reshape(-1)
    ignored = labels == IGNORE
    assert ignored.any() and not shift[:, ignored].any()  # ignore pixels are not augmented
    weight, covariance = case["weight"], full_from(case["covariance"])
    for pixel in torch.nonzero(labels != IGNORE).flatten().tolist():
        expected = strength * weight @ covariance[labels[pixel]] @ weight.t()  # Cov(W e) = λ W Σ_y Wᵀ
        torch.testing.assert_close(torch.cov(shift[:, pixel].t()), expected, rtol=0.05, atol=0.05)
        assert shift[:, pixel].mean(0).abs().max() < 0.05


def test_the_sampled_bounds_tend_to_the_closed_forms_at_the_monte_carlo_rate():
    """Mean absolute error over 16 seeds at K and 256 K samples: √256 = 16 times smaller at the Monte-Carlo rate
    (the log of a sample mean also has a bias of order 1/K, smaller still)."""
    case = make_case(batch=1, classes=4, height=2, width=2, dim=3, ignore_fraction=0.0, seed=3)
    strength, temperature = 1.5, 2.0
    exact = {"kd": fakd(case, strength, temperature).item(), "cwd": fcwd(case, strength, temperature).item()}
    errors: dict[str, list[float]] = {"kd": [], "cwd": []}
    for samples in (64, 64 * 256):
        sums = {"kd": 0.0, "cwd": 0.0}
        for seed in range(16):
            copies = augment(case, strength, samples, seed)
            sums["kd"] += abs(kd_bound_estimate(copies, case["teacher"], temperature).item() - exact["kd"])
            sums["cwd"] += abs(cwd_bound_estimate(copies, case["teacher"], temperature).item() - exact["cwd"])
        for name in errors:
            errors[name].append(sums[name] / 16)
    for name, (coarse, fine) in errors.items():
        assert coarse > 1e-3, (name, errors)  # the estimate is a sample, not the closed form in disguise
        assert fine < coarse / 8, (name, errors)  # 16 times smaller at the rate; 8 leaves room for the noise


def test_no_augmentation_is_plain_kd_and_the_expected_kd_stays_below_the_bound():
    case = make_case(batch=1, classes=4, height=2, width=3, dim=3, ignore_fraction=0.2, seed=11)
    plain = pixel_kd(case["student"], case["teacher"], 2.0)
    assert torch.equal(augment(case, 0.0, 3, seed=0), case["student"][None].expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(kd_bound_estimate(augment(case, 0.0, 3, seed=0), case["teacher"], 2.0), plain)
    copies = augment(case, 3.0, 20_000, seed=1)
    losses = torch.stack([pixel_kd(copy, case["teacher"], 2.0) for copy in copies])
    mean, stderr = losses.mean().item(), losses.std().item() / math.sqrt(len(losses))
    assert expected_loss(pixel_kd, copies, case["teacher"], 2.0).item() == pytest.approx(mean)
    assert plain.item() + 10 * stderr < mean <= fakd(case, 3.0, 2.0).item() + 4 * stderr


def test_any_method_takes_the_augmented_logits_and_its_gradient_reaches_the_student():
    """DIST has no closed-form bound: its expected loss under augmentation is the sampled mean."""
    case = make_case(batch=2, classes=4, height=2, width=3, dim=3, seed=2)
    student = case["student"].clone().requires_grad_(True)
    copies = augmented_logits(student, case["labels"], case["weight"], case["covariance"], 1.0, 8,
                              generator=torch.Generator().manual_seed(0))
    value = expected_loss(dist_loss, copies, case["teacher"])
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_bad_sample_counts_are_refused():
    case = make_case()
    with pytest.raises(ValueError, match="samples must be at least 1"):
        augment(case, 1.0, 0, seed=0)
