"""Distillation losses: plain pixel KD and CWD, and their FAKD (feature augmented) upper bounds."""

from fakd.losses.covariance import (
    ClassCovariance,
    ClassStatistics,
    label_row_table,
    logit_variance,
    pair_table,
)
from fakd.losses.fakd import exact_pixel_bounds, feature_augmented_cwd, feature_augmented_kd
from fakd.losses.kd import channel_wise_kd, pixel_kd
from fakd.losses.schedule import SCHEDULES, strength_at

__all__ = [
    "SCHEDULES",
    "ClassCovariance",
    "ClassStatistics",
    "channel_wise_kd",
    "exact_pixel_bounds",
    "feature_augmented_cwd",
    "feature_augmented_kd",
    "label_row_table",
    "logit_variance",
    "pair_table",
    "pixel_kd",
    "strength_at",
]
