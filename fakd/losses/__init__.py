"""Distillation losses: plain pixel KD, CWD and DIST, and the FAKD (feature augmented) upper bounds of KD and CWD."""

from fakd.losses.covariance import (
    ClassCovariance,
    ClassStatistics,
    label_row_table,
    logit_variance,
    pair_table,
)
from fakd.losses.dist import dist_loss
from fakd.losses.fakd import exact_pixel_bounds, feature_augmented_cwd, feature_augmented_kd
from fakd.losses.kd import channel_wise_kd, pixel_kd
from fakd.losses.schedule import SCHEDULES, strength_at

__all__ = [
    "SCHEDULES",
    "ClassCovariance",
    "ClassStatistics",
    "channel_wise_kd",
    "dist_loss",
    "exact_pixel_bounds",
    "feature_augmented_cwd",
    "feature_augmented_kd",
    "label_row_table",
    "logit_variance",
    "pair_table",
    "pixel_kd",
    "strength_at",
]
