"""Segmentation models: any timm backbone with a DeepLabV3 or FCN head."""

from fakd.models.heads import HEADS, SegmentationHead, build_head
from fakd.models.segmenter import (
    OUTPUT_STRIDES,
    Segmenter,
    SegmenterOutput,
    build_segmenter,
    count_parameters,
)

__all__ = [
    "HEADS",
    "OUTPUT_STRIDES",
    "SegmentationHead",
    "Segmenter",
    "SegmenterOutput",
    "build_head",
    "build_segmenter",
    "count_parameters",
]
