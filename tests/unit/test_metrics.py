import math

import pytest
import torch

from fakd.metrics import ConfusionMatrix


def test_miou_matches_hand_computed_values():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    matrix = ConfusionMatrix(num_classes=3)
    matrix.update(prediction, target)
    # class 0: tp 1, fp 1 (a 2 predicted 0), fn 1 (a 0 predicted 1) -> 1/3
    # class 1: tp 3, fp 1, fn 0 -> 3/4 ; class 2: tp 1, fp 0 (ignore pixel skipped), fn 1 -> 1/2
    assert matrix.iou().tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert matrix.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert matrix.pixel_accuracy() == pytest.approx(5 / 7)


def test_confusion_is_summed_over_batches_not_averaged():
    first, second = ConfusionMatrix(2), ConfusionMatrix(2)
    a_pred, a_true = torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1])
    b_pred, b_true = torch.tensor([1]), torch.tensor([1])
    first.update(a_pred, a_true)
    first.update(b_pred, b_true)
    second.update(torch.cat([a_pred, b_pred]), torch.cat([a_true, b_true]))
    assert torch.equal(first.matrix, second.matrix)
    # whole-split IoU of class 1 is 1/2; averaging per-batch IoUs would give (0 + 1) / 2 as well but class 0
    # differs: 3/4 over the split versus (3/4 + nan) per batch
    assert first.iou().tolist() == pytest.approx([3 / 4, 1 / 2])


def test_absent_class_is_excluded_from_the_mean():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert math.isnan(matrix.iou()[2])
    assert matrix.miou() == 1.0


def test_rejects_mismatched_shapes_and_out_of_range_targets():
    matrix = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="differ"):
        matrix.update(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="class 5"):
        matrix.update(torch.zeros(1, dtype=torch.long), torch.tensor([5]))
