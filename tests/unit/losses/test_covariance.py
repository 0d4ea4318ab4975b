"""Tests of fakd.losses.ClassCovariance: exact pooling over any batch split."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fakd.losses import ClassCovariance

IGNORE = 255
CLASSES, DIM = 5, 4
UNSEEN = CLASSES - 1


def make_data(seed: int = 0, batch: int = 6, size: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Features N×D×h×w with class-dependent means and scales, labels with ignore pixels, class 4 unseen."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, UNSEEN, (batch, size, size), generator=gen)
    labels[torch.rand(batch, size, size, generator=gen) < 0.15] = IGNORE
    centres = torch.randn(CLASSES, DIM, generator=gen) * 5
    mixing = torch.randn(CLASSES, DIM, DIM, generator=gen)
    noise = torch.randn(batch, size, size, DIM, generator=gen)
    index = labels.clamp(max=CLASSES - 1)
    features = centres[index] + torch.einsum("nhwde,nhwe->nhwd", mixing[index], noise)
    features[labels == IGNORE] = 1e3  # must never leak into any class
    return features.permute(0, 3, 1, 2).contiguous(), labels


def one_shot(features: torch.Tensor, labels: torch.Tensor, full: bool) -> tuple[torch.Tensor, ...]:
    """Count, mean and population (co)variance per class from all the data at once, in float64."""
    values = features.double().permute(0, 2, 3, 1).reshape(-1, DIM)
    flat = labels.reshape(-1)
    count = torch.zeros(CLASSES, dtype=torch.int64)
    mean = torch.zeros(CLASSES, DIM, dtype=torch.float64)
    cov = torch.zeros((CLASSES, DIM, DIM) if full else (CLASSES, DIM), dtype=torch.float64)
    for cls in range(CLASSES):
        x = values[flat == cls]
        if len(x):
            count[cls], mean[cls] = len(x), x.mean(0)
            centred = x - x.mean(0)
            cov[cls] = centred.t() @ centred / len(x) if full else (centred**2).mean(0)
    return count, mean, cov


SPLITS = {
    "one batch": [6],
    "single images": [1] * 6,
    "uneven": [2, 3, 1],
}


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("split", list(SPLITS))
def test_pooled_estimate_equals_one_shot(full, split):
    features, labels = make_data()
    estimator = ClassCovariance(CLASSES, DIM, full=full)
    for feats, labs in zip(features.split(SPLITS[split]), labels.split(SPLITS[split]), strict=True):
        estimator.update(feats, labs)
    count, mean, cov = one_shot(features, labels, full)
    assert torch.equal(estimator.count, count)
    assert estimator.covariance.dtype == torch.float32
    assert estimator.covariance.shape == cov.shape
    assert torch.allclose(estimator.mean.double(), mean, rtol=1e-6, atol=1e-5)
    assert torch.allclose(estimator.covariance.double(), cov, rtol=1e-5, atol=1e-5)
    assert estimator.count[UNSEEN] == 0
    assert torch.all(estimator.covariance[UNSEEN] == 0) and torch.all(estimator.mean[UNSEEN] == 0)


@pytest.mark.parametrize("full", [False, True])
def test_spatial_crops_and_empty_batches_pool_exactly(full):
    features, labels = make_data(seed=3)
    estimator = ClassCovariance(CLASSES, DIM, full=full)
    estimator.update(features[:, :, :2], labels[:, :2])
    estimator.update(features[:, :, 2:], labels[:, 2:])
    estimator.update(features[:1], torch.full_like(labels[:1], IGNORE))  # nothing labelled: no change
    _, _, cov = one_shot(features, labels, full)
    assert torch.allclose(estimator.covariance.double(), cov, rtol=1e-5, atol=1e-5)


def test_diagonal_equals_full_diagonal():
    features, labels = make_data(seed=5)
    diagonal, full = ClassCovariance(CLASSES, DIM), ClassCovariance(CLASSES, DIM, full=True)
    for feats, labs in zip(features.split(2), labels.split(2), strict=True):
        diagonal.update(feats, labs)
        full.update(feats, labs)
    assert torch.allclose(diagonal.covariance, torch.diagonal(full.covariance, dim1=1, dim2=2), atol=1e-5)


def test_labels_are_nearest_resized_to_the_features():
    features, labels = make_data(seed=7, size=4)
    big = F.interpolate(labels[:, None].float(), scale_factor=2, mode="nearest")[:, 0].long()
    estimator = ClassCovariance(CLASSES, DIM)
    estimator.update(features, big)
    _, _, cov = one_shot(features, labels, full=False)
    assert torch.allclose(estimator.covariance.double(), cov, rtol=1e-5, atol=1e-5)


def test_state_checkpoints_with_state_dict():
    features, labels = make_data(seed=9)
    estimator = ClassCovariance(CLASSES, DIM, full=True)
    estimator.update(features[:3], labels[:3])
    restored = ClassCovariance(CLASSES, DIM, full=True)
    restored.load_state_dict(estimator.state_dict())
    for module in (estimator, restored):
        module.update(features[3:], labels[3:])
    assert torch.equal(restored.covariance, estimator.covariance)
    assert set(estimator.state_dict()) == {"n_seen", "running_mean", "running_m2"}
    assert estimator.running_m2.dtype == torch.float64


def test_update_detaches_and_rejects_bad_labels():
    features, labels = make_data(seed=1)
    estimator = ClassCovariance(CLASSES, DIM)
    estimator.update(features.requires_grad_(True), labels)
    assert not estimator.covariance.requires_grad
    bad = labels.clone()
    bad[0, 0, 0] = CLASSES
    with pytest.raises(ValueError, match="labels"):
        estimator.update(features, bad)
    estimator.reset()
    assert torch.all(estimator.count == 0) and torch.all(estimator.covariance == 0)
