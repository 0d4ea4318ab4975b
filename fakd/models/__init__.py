"""Segmentation models: any timm backbone with a DeepLabV3, PSPNet or FCN head (students and trained teachers),
and model-zoo teachers loaded from mmsegmentation or torchvision checkpoints (`fakd.models.zoo`)."""

from fakd.models.heads import HEADS, SegmentationHead, build_head
from fakd.models.segmenter import (
    OUTPUT_STRIDES,
    Segmenter,
    SegmenterOutput,
    build_segmenter,
    count_parameters,
)
from fakd.models.zoo import TORCHVISION_ARCHS, MMSegArchitecture, ZooSegmenter, load_mmseg, load_torchvision

__all__ = [
    "HEADS",
    "OUTPUT_STRIDES",
    "SegmentationHead",
    "Segmenter",
    "SegmenterOutput",
    "TORCHVISION_ARCHS",
    "MMSegArchitecture",
    "ZooSegmenter",
    "build_head",
    "build_segmenter",
    "count_parameters",
    "load_mmseg",
    "load_torchvision",
]
