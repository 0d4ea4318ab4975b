"""Tests of fakd.losses: plain KD/CWD, the FAKD bounds, the pair tables and the strength schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fakd.losses.fakd as fakd_module
from fakd.losses import (
    SCHEDULES,
    channel_wise_kd,
    exact_pixel_bounds,
    feature_augmented_cwd,
    feature_augmented_kd,
    label_row_table,
    logit_variance,
    pair_table,
    pixel_kd,
    strength_at,
)

IGNORE = 255


# ----------------------------------------------------------------------------- helpers


def make_case(
    batch: int = 2,
    classes: int = 5,
    height: int = 3,
    width: int = 4,
    dim: int = 3,
    *,
    full: bool = False,
    logit_scale: float = 2.0,
    dtype: torch.dtype = torch.float64,
    ignore_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Random student/teacher logits, labels with ignore pixels, classifier weight and covariance."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, height, width, generator=gen, dtype=dtype) * logit_scale
    teacher = torch.randn(batch, classes, height, width, generator=gen, dtype=dtype) * logit_scale
    labels = torch.randint(0, classes, (batch, height, width), generator=gen)
    labels[torch.rand(batch, height, width, generator=gen) < ignore_fraction] = IGNORE
    weight = torch.randn(classes, dim, generator=gen, dtype=dtype)
    if full:
        factor = torch.randn(classes, dim, dim, generator=gen, dtype=dtype) / math.sqrt(dim)
        covariance = factor @ factor.transpose(1, 2) + 0.1 * torch.eye(dim, dtype=dtype)
    else:
        covariance = torch.rand(classes, dim, generator=gen, dtype=dtype) + 0.1
    return {"student": student, "teacher": teacher, "labels": labels, "weight": weight, "covariance": covariance}


def full_from(covariance: torch.Tensor) -> torch.Tensor:
    """C×D×D covariance from diagonal variances (identity for an already full one)."""
    return torch.diag_embed(covariance) if covariance.dim() == 2 else covariance


def naive_pair_table(weight: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Q[y, j, k] = (w_k − w_j)ᵀ Σ_y (w_k − w_j) straight from the definition."""
    diff = weight[None, :, :] - weight[:, None, :]  # [j, k] = w_k − w_j
    return torch.einsum("jkd,yde,jke->yjk", diff, full_from(covariance), diff)


def naive_logit_variance(weight: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """V[y, c] = w_cᵀ Σ_y w_c straight from the definition."""
    return torch.einsum("cd,yde,ce->yc", weight, full_from(covariance), weight)


def flat(logits: torch.Tensor) -> torch.Tensor:
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def naive_pixel_bounds(case: dict, strength: float, temperature: float) -> torch.Tensor:
    """Per-pixel bound B (N·h·w) in float64, materialising the full M×C×C table."""
    z = flat(case["student"].double())
    log_p = flat(F.log_softmax(case["teacher"].double() / temperature, dim=1))
    labels = case["labels"].reshape(-1)
    table = naive_pair_table(case["weight"].double(), case["covariance"].double())
    classes = z.shape[1]
    augmented = (labels != IGNORE)[:, None, None]
    pairs = table[labels.clamp(max=classes - 1)] * augmented
    exponents = (z[:, None, :] - z[:, :, None]) / temperature + strength / (2 * temperature**2) * pairs
    lse = torch.logsumexp(exponents, dim=2)
    return (log_p.exp() * (log_p + lse)).sum(dim=1)


def naive_fakd(case: dict, strength: float, temperature: float) -> torch.Tensor:
    return temperature**2 * naive_pixel_bounds(case, strength, temperature).mean()


def naive_cwd_bound(case: dict, strength: float, temperature: float) -> torch.Tensor:
    """T² · mean over maps of B_cwd in float64, straight from the formula."""
    s = case["student"].double().flatten(2) / temperature  # N×C×X
    log_q = F.log_softmax(case["teacher"].double().flatten(2) / temperature, dim=2)
    labels = case["labels"].flatten(1)  # N×X
    variance = naive_logit_variance(case["weight"].double(), case["covariance"].double())
    classes = s.shape[1]
    bias = variance[labels.clamp(max=classes - 1)] * (labels != IGNORE)[..., None]  # N×X×C
    bias = strength / (2 * temperature**2) * bias.movedim(-1, 1)
    q = log_q.exp()
    per_map = (q * log_q).sum(2) - (q * s).sum(2) + torch.logsumexp(s + bias, dim=2)
    return temperature**2 * per_map.mean()


def fakd(case: dict, strength: float, temperature: float = 1.0, **kwargs) -> torch.Tensor:
    return feature_augmented_kd(
        case["student"],
        case["teacher"],
        case["labels"],
        case["weight"],
        case["covariance"],
        strength,
        temperature,
        **kwargs,
    )


def fcwd(case: dict, strength: float, temperature: float = 1.0, **kwargs) -> torch.Tensor:
    return feature_augmented_cwd(
        case["student"],
        case["teacher"],
        case["labels"],
        case["weight"],
        case["covariance"],
        strength,
        temperature,
        **kwargs,
    )


def with_grad(case: dict, *names: str) -> dict:
    """Copy of the case whose named tensors are fresh leaves requiring grad."""
    out = dict(case)
    for name in names:
        out[name] = case[name].detach().clone().requires_grad_(True)
    return out


class FallbackSpy:
    """Counts the (pixel, row) entries recomputed by the direct-logsumexp fallback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries = 0
        original = fakd_module._direct_row_lse

        def counting(z, cols, table_rows, temperature):
            self.entries += cols.numel()
            return original(z, cols, table_rows, temperature)

        monkeypatch.setattr(fakd_module, "_direct_row_lse", counting)


# ----------------------------------------------------------------------------- plain KD and CWD


def test_pixel_kd_hand_computed():
    # pixel 1: p = (3/4, 1/4) (teacher logits 2·ln3, 0 at T = 2), q = (1/2, 1/2); pixel 2: identical logits.
    teacher = torch.tensor([[[[2 * math.log(3.0), 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    student = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected = 4.0 * (kl + 0.0) / 2
    assert pixel_kd(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_channel_wise_kd_hand_computed():
    # channel 0: spatial q_t = (3/4, 1/4), q_s = (1/2, 1/2); channel 1: equal maps (KL 0).
    teacher = torch.tensor([[[[math.log(3.0), 0.0]], [[1.0, 2.0]]]], dtype=torch.float64)
    student = torch.tensor([[[[5.0, 5.0]], [[1.0, 2.0]]]], dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert channel_wise_kd(student, teacher).item() == pytest.approx(kl / 2, rel=1e-12)
    assert channel_wise_kd(student, teacher, temperature=3.0).item() > 0.0


def test_kd_resizes_teacher_bilinearly():
    case = make_case(height=4, width=6)
    big_teacher = torch.randn(2, 5, 8, 12, dtype=torch.float64)
    resized = F.interpolate(big_teacher, size=(4, 6), mode="bilinear", align_corners=False)
    for loss in (pixel_kd, channel_wise_kd):
        assert torch.allclose(loss(case["student"], big_teacher, 2.0), loss(case["student"], resized, 2.0))


def test_kd_zero_for_identical_logits():
    case = make_case()
    assert pixel_kd(case["student"], case["student"], 3.0).abs().item() < 1e-12
    assert channel_wise_kd(case["student"], case["student"], 3.0).abs().item() < 1e-12


# ----------------------------------------------------------------------------- pair tables


@pytest.mark.parametrize("full", [False, True])
def test_pair_table_matches_definition(full):
    case = make_case(classes=6, dim=4, full=full)
    table = pair_table(case["weight"], case["covariance"])
    expected = naive_pair_table(case["weight"], case["covariance"])
    assert table.shape == (6, 6, 6)
    assert torch.allclose(table, expected, rtol=1e-10, atol=1e-10)
    assert torch.all(torch.diagonal(table, dim1=1, dim2=2) == 0)
    rows = label_row_table(case["weight"], case["covariance"])
    assert torch.allclose(rows, expected[torch.arange(6), torch.arange(6)], atol=1e-10)
    variance = logit_variance(case["weight"], case["covariance"])
    assert torch.allclose(variance, naive_logit_variance(case["weight"], case["covariance"]), atol=1e-10)


# ----------------------------------------------------------------------------- the bounds: exactness


@pytest.mark.parametrize("full", [False, True])
def test_zero_strength_or_covariance_is_plain_kd(full):
    case = make_case(full=full)
    zero_cov = dict(case, covariance=torch.zeros_like(case["covariance"]))
    kd = pixel_kd(case["student"], case["teacher"], 2.0)
    cwd = channel_wise_kd(case["student"], case["teacher"], 2.0)
    for form in ("exact", "label_row"):
        assert torch.allclose(fakd(case, 0.0, 2.0, form=form), kd, rtol=1e-13, atol=0)
        assert torch.allclose(fakd(zero_cov, 3.0, 2.0, form=form), kd, rtol=1e-13, atol=0)
    assert torch.allclose(fcwd(case, 0.0, 2.0), cwd, rtol=1e-13, atol=0)
    assert torch.allclose(fcwd(zero_cov, 3.0, 2.0), cwd, rtol=1e-13, atol=0)


def test_zero_strength_is_plain_kd_in_float32():
    case = make_case(dtype=torch.float32, height=8, width=8, classes=19)
    kd = pixel_kd(case["student"], case["teacher"], 4.0)
    assert torch.allclose(fakd(case, 0.0, 4.0), kd, rtol=1e-6, atol=0)
    zero_cov = dict(case, covariance=torch.zeros_like(case["covariance"]))
    assert torch.allclose(fakd(zero_cov, 5.0, 4.0), kd, rtol=1e-5, atol=0)


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(("strength", "temperature"), [(0.5, 1.0), (4.0, 2.0), (2.0, 0.7)])
def test_exact_bound_matches_direct_reference(full, strength, temperature):
    case = with_grad(make_case(full=full, seed=3), "student")
    bounds = exact_pixel_bounds(
        case["student"],
        case["teacher"],
        case["labels"],
        case["weight"],
        case["covariance"],
        strength,
        temperature,
    )
    expected = naive_pixel_bounds(case, strength, temperature)
    assert torch.allclose(bounds.reshape(-1), expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(fakd(case, strength, temperature), case["student"])
    (expected_grad,) = torch.autograd.grad(naive_fakd(case, strength, temperature), case["student"])
    assert torch.allclose(grad, expected_grad, rtol=1e-10, atol=1e-13)


def test_ignore_pixels_get_plain_kd():
    case = make_case(ignore_fraction=0.0)
    case["labels"][0] = IGNORE
    bounds = exact_pixel_bounds(
        case["student"], case["teacher"], case["labels"], case["weight"], case["covariance"], 5.0, 2.0
    )
    log_q = F.log_softmax(case["student"][:1] / 2.0, dim=1)
    log_p = F.log_softmax(case["teacher"][:1] / 2.0, dim=1)
    plain = (log_p.exp() * (log_p - log_q)).sum(1)
    assert torch.allclose(bounds[:1], plain, rtol=1e-12)
    assert torch.all(bounds[1] > naive_pixel_bounds(case, 0.0, 2.0).view(2, 3, 4)[1])


def test_cwd_bound_matches_direct_reference():
    for full in (False, True):
        case = make_case(full=full, seed=5)
        for strength, temperature in ((1.0, 1.0), (6.0, 3.0)):
            expected = naive_cwd_bound(case, strength, temperature)
            assert torch.allclose(fcwd(case, strength, temperature), expected, rtol=1e-12)


def test_labels_larger_than_logits_are_nearest_resized():
    case = make_case(height=4, width=4)
    big = torch.randint(0, 5, (2, 8, 8))
    big[:, :2] = IGNORE
    small = F.interpolate(big[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    for loss in (fakd, fcwd):
        assert torch.equal(loss(dict(case, labels=big), 2.0, 2.0), loss(dict(case, labels=small), 2.0, 2.0))
    assert torch.equal(
        fakd(dict(case, labels=big), 2.0, form="label_row"), fakd(dict(case, labels=small), 2.0, form="label_row")
    )


def test_teacher_of_other_size_is_resized():
    case = make_case(height=4, width=4)
    big_teacher = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    resized = F.interpolate(big_teacher, size=(4, 4), mode="bilinear", align_corners=False)
    for loss in (fakd, fcwd):
        assert torch.allclose(loss(dict(case, teacher=big_teacher), 2.0), loss(dict(case, teacher=resized), 2.0))


# ----------------------------------------------------------------------------- the bounds: properties


def sample_augmented_logits(case: dict, strength: float, samples: int, seed: int) -> torch.Tensor:
    """K×N×C×h×w student logits z + W e with e ~ N(0, λ Σ_y) per pixel (no noise at ignore pixels)."""
    gen = torch.Generator().manual_seed(seed)
    labels = case["labels"].reshape(-1)
    dim = case["weight"].shape[1]
    chol = torch.linalg.cholesky(strength * full_from(case["covariance"]))  # C×D×D
    eps = torch.randn(samples, labels.numel(), dim, generator=gen, dtype=torch.float64)
    noise = torch.einsum("mde,kme->kmd", chol[labels.clamp(max=chol.shape[0] - 1)], eps)
    noise = noise * (labels != IGNORE)[None, :, None]
    logit_noise = noise @ case["weight"].t()  # K×M×C
    n, c, h, w = case["student"].shape
    return case["student"][None] + logit_noise.view(samples, n, h, w, c).movedim(-1, 2)


def monte_carlo(losses: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-sample losses."""
    return losses.mean().item(), (losses.std() / math.sqrt(losses.numel())).item()


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(("strength", "temperature"), [(1.0, 1.0), (3.0, 2.0)])
def test_bounds_not_below_monte_carlo(full, strength, temperature):
    case = make_case(batch=1, classes=4, height=2, width=3, dim=3, full=full, ignore_fraction=0.2, seed=11)
    noisy = sample_augmented_logits(case, strength, samples=40_000, seed=1)  # K×N×C×h×w
    t = temperature
    log_q = F.log_softmax(noisy / t, dim=2)
    log_p = F.log_softmax(case["teacher"] / t, dim=1)[None]
    kd_samples = t**2 * (log_p.exp() * (log_p - log_q)).sum(2).flatten(1).mean(1)
    log_qs = F.log_softmax(noisy.flatten(3) / t, dim=3)
    log_ps = F.log_softmax(case["teacher"].flatten(2) / t, dim=2)[None]
    cwd_samples = t**2 * (log_ps.exp() * (log_ps - log_qs)).sum(3).flatten(1).mean(1)
    for bound, samples, plain in (
        (fakd(case, strength, t), kd_samples, pixel_kd(case["student"], case["teacher"], t)),
        (fcwd(case, strength, t), cwd_samples, channel_wise_kd(case["student"], case["teacher"], t)),
    ):
        mean, stderr = monte_carlo(samples)
        assert mean - plain.item() > 10 * stderr  # the augmentation is visible above the sampling error
        assert bound.item() >= mean - 4 * stderr


@pytest.mark.parametrize("full", [False, True])
def test_bounds_grow_with_strength(full):
    case = make_case(full=full, seed=4)
    grid = [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0]
    for loss in (fakd, fcwd, lambda c, s: fakd(c, s, form="label_row")):
        values = torch.stack([loss(case, s) for s in grid])
        assert torch.all(values[1:] > values[:-1])


def test_label_row_equals_exact_for_one_hot_teacher():
    case = make_case(seed=8, ignore_fraction=0.3)
    labels = case["labels"]
    one_hot = F.one_hot(labels.clamp(max=4), 5).movedim(-1, 1).double()
    case["teacher"] = 80.0 * one_hot  # p ≈ one-hot at the label (off-label mass e^-80)
    for strength in (0.5, 3.0):
        exact = fakd(case, strength, 1.0)
        assert torch.allclose(fakd(case, strength, 1.0, form="label_row"), exact, rtol=1e-10)


def test_label_row_is_kd_on_shifted_logits():
    case = make_case(seed=9)
    strength, t = 2.0, 1.5
    rows = naive_pair_table(case["weight"], case["covariance"])[torch.arange(5), torch.arange(5)]
    labels = case["labels"]
    shift = rows[labels.clamp(max=4)].movedim(-1, 1) * (labels != IGNORE)[:, None]
    expected = pixel_kd(case["student"] + strength / (2 * t) * shift, case["teacher"], t)
    assert torch.allclose(fakd(case, strength, t, form="label_row"), expected, rtol=1e-12)
    assert fcwd(case, strength, t, form="label_row").item() == fcwd(case, strength, t).item()


def test_diagonal_and_full_covariance_agree():
    case = make_case(seed=6)
    full_case = dict(case, covariance=torch.diag_embed(case["covariance"]))
    full_table = pair_table(full_case["weight"], full_case["covariance"])
    assert torch.allclose(pair_table(case["weight"], case["covariance"]), full_table, rtol=1e-12)
    for loss in (fakd, fcwd, lambda c, s: fakd(c, s, form="label_row")):
        assert torch.allclose(loss(case, 3.0), loss(full_case, 3.0), rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 5, 17])
def test_chunked_equals_unchunked(chunk_size):
    case = with_grad(make_case(height=6, width=5, seed=2), "student")
    for loss in (fakd, fcwd):
        whole = loss(case, 2.0, 1.5)
        (whole_grad,) = torch.autograd.grad(whole, case["student"])
        chunked = loss(case, 2.0, 1.5, chunk_size=chunk_size)
        (chunked_grad,) = torch.autograd.grad(chunked, case["student"])
        assert torch.allclose(chunked, whole, rtol=1e-13, atol=0)
        assert torch.allclose(chunked_grad, whole_grad, rtol=1e-12, atol=1e-15)


def test_no_grad_evaluation_matches():
    case = with_grad(make_case(seed=12), "student")
    with torch.no_grad():
        frozen = fakd(case, 3.0, 2.0)
    assert torch.equal(frozen, fakd(case, 3.0, 2.0).detach())


# ----------------------------------------------------------------------------- gradients


def tiny_case(full: bool) -> dict:
    return with_grad(make_case(batch=1, classes=3, height=2, width=3, dim=2, full=full, seed=7), "student", "teacher")


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("loss", ["exact", "label_row", "cwd"])
def test_gradcheck(full, loss):
    case = tiny_case(full)

    def evaluate(student, teacher):
        args = (student, teacher, case["labels"], case["weight"], case["covariance"], 1.5, 1.3)
        if loss == "cwd":
            return feature_augmented_cwd(*args)
        return feature_augmented_kd(*args, form=loss)

    assert torch.autograd.gradcheck(evaluate, (case["student"], case["teacher"]))


def test_gradcheck_direct_fallback(monkeypatch):
    """With every row distrusted, the direct-logsumexp path carries the value and the gradient."""
    case = tiny_case(full=False)
    reference = fakd(case, 2.0, 0.8)
    spy = FallbackSpy(monkeypatch)
    monkeypatch.setattr(fakd_module, "_underflow_threshold", lambda dtype: math.inf)
    assert torch.allclose(fakd(case, 2.0, 0.8), reference, rtol=1e-12)
    assert spy.entries > 0

    def evaluate(student, teacher):
        return feature_augmented_kd(student, teacher, case["labels"], case["weight"], case["covariance"], 2.0, 0.8)

    assert torch.autograd.gradcheck(evaluate, (case["student"], case["teacher"]))


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("strength", [0.0, 1.0, 20.0])
def test_extreme_logits_match_float64(temperature, strength):
    case = make_case(batch=2, classes=6, height=4, width=4, dim=4, dtype=torch.float32, seed=13)
    gen = torch.Generator().manual_seed(21)
    case["student"] = (torch.rand(2, 6, 4, 4, generator=gen) * 100 - 50).requires_grad_(True)
    case["teacher"] = torch.rand(2, 6, 4, 4, generator=gen) * 100 - 50
    case["weight"] = case["weight"] * 3.0
    case64 = with_grad({k: v.detach().double() if v.is_floating_point() else v for k, v in case.items()}, "student")

    for loss, reference in ((fakd, naive_fakd), (fcwd, naive_cwd_bound)):
        value = loss(case, strength, temperature)
        (grad,) = torch.autograd.grad(value, case["student"])
        expected = reference(case64, strength, temperature)
        (expected_grad,) = torch.autograd.grad(expected, case64["student"])
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)
        scale = expected_grad.abs().max().item()
        assert torch.allclose(grad.double(), expected_grad, atol=1e-5 * scale + 1e-9, rtol=1e-4)


def test_underflow_fallback_is_exercised_and_correct(monkeypatch):
    spy = FallbackSpy(monkeypatch)
    case = make_case(batch=2, classes=6, height=4, width=4, dim=4, dtype=torch.float32, seed=13)
    gen = torch.Generator().manual_seed(21)
    case["student"] = (torch.rand(2, 6, 4, 4, generator=gen) * 100 - 50).requires_grad_(True)
    case["weight"] = case["weight"] * 3.0
    bounds = exact_pixel_bounds(
        case["student"], case["teacher"], case["labels"], case["weight"], case["covariance"], 20.0, 0.5
    )
    assert spy.entries > 0
    case64 = {k: v.detach().double() if v.is_floating_point() else v for k, v in case.items()}
    expected = naive_pixel_bounds(case64, 20.0, 0.5)
    assert torch.allclose(bounds.reshape(-1).double(), expected, rtol=1e-5, atol=1e-3)
    (grad,) = torch.autograd.grad(bounds.sum(), case["student"])
    assert torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- validation


def test_invalid_arguments_raise():
    case = make_case()
    with pytest.raises(ValueError, match="exact"):
        fakd(case, 1.0, form="isda")
    with pytest.raises(ValueError, match="label_row"):
        fcwd(case, 1.0, form="nope")
    with pytest.raises(ValueError, match="strength"):
        fakd(case, -1.0)
    with pytest.raises(ValueError, match="temperature"):
        fakd(case, 1.0, 0.0)
    bad = dict(case, labels=case["labels"].clone())
    bad["labels"][0, 0, 0] = 7
    for loss in (fakd, fcwd):
        with pytest.raises(ValueError, match="labels"):
            loss(bad, 1.0)


# ----------------------------------------------------------------------------- schedules


def test_strength_schedules():
    assert strength_at(0, 100, 4.0, "linear") == 0.0
    assert strength_at(50, 100, 4.0, "linear") == pytest.approx(2.0)
    assert strength_at(100, 100, 4.0, "linear") == pytest.approx(4.0)
    assert strength_at(0, 100, 4.0, "cosine") == 0.0
    assert strength_at(25, 100, 4.0, "cosine") == pytest.approx(4.0 * (1 - math.cos(math.pi / 4)) / 2)
    assert strength_at(50, 100, 4.0, "cosine") == pytest.approx(2.0)
    assert strength_at(100, 100, 4.0, "cosine") == pytest.approx(4.0)
    for step in (0, 50, 100):
        assert strength_at(step, 100, 4.0, "constant") == 4.0
    assert strength_at(250, 100, 4.0, "linear") == pytest.approx(4.0)  # clipped to [0, 1]
    assert strength_at(-5, 100, 4.0, "cosine") == 0.0
    assert set(SCHEDULES) == {"linear", "cosine", "constant"}


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="linear.*cosine.*constant"):
        strength_at(1, 10, 1.0, "exponential")
