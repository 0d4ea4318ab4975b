"""Optimiser and the poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from fakd.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """SGD with momentum (the field's default) or AdamW; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = lr if lr is not None else cfg.lr
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def poly_schedule(
    optimizer: torch.optim.Optimizer, total_iters: int, power: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr · (1 − t/T)^power, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / total_iters) ** power
    )
