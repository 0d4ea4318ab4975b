"""Segmentation metrics from a confusion matrix accumulated over a whole split."""

from __future__ import annotations

import torch

from fakd.vocab import IGNORE_INDEX


class ConfusionMatrix:
    """Counts (target, prediction) pairs over every labelled pixel seen; ignore pixels are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `prediction` and `target` hold class ids of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
        keep = target != self.ignore_index
        target, prediction = target[keep].long().cpu(), prediction[keep].long().cpu()
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(f"target holds class {int(target.max())} but there are {self.num_classes} classes")
        pairs = target * self.num_classes + prediction
        self.matrix += torch.bincount(pairs, minlength=self.num_classes**2).view_as(self.matrix)

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for a class that is neither in the targets nor in the predictions."""
        matrix = self.matrix.double()
        true_positive = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - true_positive
        return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes with a defined IoU."""
        iou = self.iou()
        valid = ~iou.isnan()
        return float(iou[valid].mean()) if valid.any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else float("nan")

    def summary(self) -> dict[str, float | list[float]]:
        return {"miou": self.miou(), "pixel_acc": self.pixel_accuracy(), "per_class_iou": self.iou().tolist()}
