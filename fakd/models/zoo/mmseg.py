"""Loading an mmsegmentation model-zoo checkpoint (EncoderDecoder, ResNetV1c, ASPP/PSP/FCN head) without mmseg.

The architecture is read from the weights: depth (blocks per stage, BasicBlock or Bottleneck), stem and base
widths, head type (`image_pool`+`aspp_modules` -> ASPPHead, `psp_modules` -> PSPHead, `convs` -> FCNHead),
channels, number of classes, FCN conv count, kernel size and `conv_cat`. `auxiliary_head.*` is ignored;
every other key must be consumed. What the weights cannot say comes from the checkpoint's config text when
its meta carries one (mmseg 0.x `meta['config']`, mmengine `meta['cfg']`; read literally, never executed)
and otherwise from mmseg's standard configs (configs/_base_/models/*_r50-d8.py and the d16 variants):

- output stride 8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation; ASPP dilations
  (1, 12, 24, 36); FCN dilation 1.
- output stride 16: strides (1, 2, 2, 1), dilations (1, 1, 1, 2), contract_dilation; DeepLabV3 adds
  multi_grid (1, 2, 4) and ASPP dilations (1, 6, 12, 18) (the r101-d16-mg124 models); FCN dilation 6 (fcn-d6).
- PSP pool scales (1, 2, 3, 6); align_corners False; head on stage 3; mean (123.675, 116.28, 103.53),
  std (58.395, 57.12, 57.375) on 0-255 RGB pixels.

A config trained at another output stride than the one asked for is an error rather than a silent change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fakd.errors import UserError
from fakd.models.zoo.checkpoint import (
    checkpoint_error,
    load_exactly,
    preview,
    read_checkpoint,
    strip_prefix,
    tensor_state_dict,
)
from fakd.models.zoo.config_text import UNKNOWN, lookup, parse_config_text
from fakd.models.zoo.frozen import ZooSegmenter
from fakd.models.zoo.mmseg_heads import ASPPHead, DecodeHead, EncoderDecoder, FCNHead, PSPHead
from fakd.models.zoo.normalization import InputRenormalization, harness_normalization
from fakd.models.zoo.resnet_v1c import BOTTLENECK_DEPTHS, STAGE_BLOCKS, ResNetV1c, StageLayout

MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)
MMSEG_OUTPUT_STRIDES = (8, 16)
HEAD_TYPES = {"deeplabv3": "ASPPHead", "pspnet": "PSPHead", "fcn": "FCNHead"}
EXPECTED = (
    "an mmsegmentation EncoderDecoder checkpoint ({'state_dict', 'meta'}) with a ResNetV1c backbone "
    "(depth 18, 34, 50, 101 or 152) and an ASPPHead, PSPHead or FCNHead decode head"
)

_STANDARD_STAGES = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2))}
_STANDARD_ASPP_DILATIONS = {8: (1, 12, 24, 36), 16: (1, 6, 12, 18)}
_STANDARD_FCN_DILATION = {8: 1, 16: 6}
_POOL_SCALES = (1, 2, 3, 6)


@dataclass(frozen=True)
class MMSegArchitecture:
    """What `load_mmseg` built; `from_config` names the settings taken from the checkpoint's config text."""

    depth: int
    head: str  # deeplabv3 | pspnet | fcn
    num_classes: int
    in_channels: int
    channels: int
    stem_channels: int
    base_channels: int
    layout: StageLayout
    caffe_style: bool
    head_options: Mapping[str, Any]
    in_index: int
    align_corners: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr_input: bool
    from_config: tuple[str, ...] = field(default=())

    @property
    def output_stride(self) -> int:
        return self.layout.output_stride


@dataclass(frozen=True)
class _HeadWeights:
    head: str
    num_classes: int
    in_channels: int
    channels: int
    branches: int
    kernel_size: int = 3
    concat_input: bool = False


def load_mmseg(
    checkpoint: str | os.PathLike[str],
    output_stride: int = 8,
    *,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> ZooSegmenter:
    """A frozen mmseg model: harness images (`(x/255 - input_mean)/input_std`, RGB) -> N x C x H x W logits.

    `input_mean`/`input_std` default to the harness's ImageNet values. The images are re-normalised to the
    model's own mean/std and channel order first (a no-op for mmseg's standard normalisation, which equals
    the ImageNet one on 0-255 pixels).
    """
    if output_stride not in MMSEG_OUTPUT_STRIDES:
        raise UserError(
            f"output stride {output_stride!r} is not supported for mmseg teachers; accepted: 8, 16",
            key="teacher.output_stride",
        )
    path = os.path.expanduser(os.fspath(checkpoint))
    content = read_checkpoint(path, EXPECTED)
    state = strip_prefix(tensor_state_dict(path, content, EXPECTED, wrappers=("state_dict",)), "module.")
    state = {key: value for key, value in state.items() if not key.startswith("auxiliary_head.")}
    meta = content.get("meta") if isinstance(content, Mapping) else None
    architecture = read_architecture(path, state, _meta_config(meta), output_stride)
    network = build_network(architecture)
    load_exactly(network, state, path, EXPECTED)
    input_mean, input_std = harness_normalization(input_mean, input_std)
    renormalize = InputRenormalization(
        input_mean, input_std, architecture.mean, architecture.std, flip_channels=architecture.bgr_input
    )
    return ZooSegmenter(
        network,
        renormalize,
        architecture.num_classes,
        source="mmseg",
        architecture=architecture,
        class_names=_class_names(meta, architecture.num_classes),
    )


def build_network(architecture: MMSegArchitecture) -> EncoderDecoder:
    """The EncoderDecoder of `architecture`, randomly initialised."""
    a = architecture
    backbone = ResNetV1c(a.depth, a.layout, a.stem_channels, a.base_channels, a.caffe_style)
    options = dict(a.head_options)
    head: DecodeHead
    if a.head == "deeplabv3":
        head = ASPPHead(a.in_channels, a.channels, a.num_classes, options["dilations"], a.align_corners)
    elif a.head == "pspnet":
        head = PSPHead(a.in_channels, a.channels, a.num_classes, options["pool_scales"], a.align_corners)
    else:
        head = FCNHead(a.in_channels, a.channels, a.num_classes, align_corners=a.align_corners, **options)
    return EncoderDecoder(backbone, head, a.in_index)


def read_architecture(
    path: str, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], output_stride: int
) -> MMSegArchitecture:
    """The architecture of the (auxiliary-free) mmseg state dict `state`, completed from `config`."""
    depth, stem_channels, base_channels = _read_backbone(path, state)
    weights = _read_head(path, state)
    model = lookup(config, "model")
    backbone_cfg, head_cfg = lookup(model, "backbone"), lookup(model, "decode_head")
    _check_config_types(path, model, backbone_cfg, head_cfg, weights.head)
    used: list[str] = []
    read = _ConfigReader(used)
    layout, caffe_style = _read_layout(path, read, backbone_cfg, weights.head, output_stride, depth)
    head_options = _read_head_options(path, read, head_cfg, weights, output_stride)
    in_index = read("decode_head", head_cfg, "in_index", 3, 3, _stage_index)
    align_corners = read("decode_head", head_cfg, "align_corners", False, False, _bool)
    mean, std, bgr_input = _read_normalization(config, model, used)
    return MMSegArchitecture(
        depth=depth,
        head=weights.head,
        num_classes=weights.num_classes,
        in_channels=weights.in_channels,
        channels=weights.channels,
        stem_channels=stem_channels,
        base_channels=base_channels,
        layout=layout,
        caffe_style=caffe_style,
        head_options=head_options,
        in_index=in_index,
        align_corners=align_corners,
        mean=mean,
        std=std,
        bgr_input=bgr_input,
        from_config=tuple(used),
    )


class _ConfigReader:
    """`read(name, section, key, standard, class_default, convert)`: the config's value when it states one.

    A key the section omits takes mmseg's class default (the config states it by omission); a section
    that is not readable, or a value `convert` rejects (returns UNKNOWN), falls back to the standard value.
    Each value taken from the config is recorded as `name.key` in `used`.
    """

    def __init__(self, used: list[str]) -> None:
        self.used = used

    def __call__(self, name: str, section: Any, key: str, standard: Any, class_default: Any,
                 convert: Callable[[Any], Any]) -> Any:
        if not isinstance(section, Mapping):
            return standard
        value = convert(section[key]) if key in section else class_default
        if value is UNKNOWN:
            return standard
        self.used.append(f"{name}.{key}")
        return value


def _read_layout(
    path: str, read: _ConfigReader, backbone_cfg: Any, head: str, output_stride: int, depth: int
) -> tuple[StageLayout, bool]:
    strides, dilations = _STANDARD_STAGES[output_stride]
    multi_grid = (1, 2, 4) if head == "deeplabv3" and output_stride == 16 else None
    used_before = len(read.used)
    layout = StageLayout(
        strides=read("backbone", backbone_cfg, "strides", strides, (1, 2, 2, 2), _int_tuple(4)),
        dilations=read("backbone", backbone_cfg, "dilations", dilations, (1, 1, 1, 1), _int_tuple(4)),
        multi_grid=read("backbone", backbone_cfg, "multi_grid", multi_grid, None, _optional_multi_grid),
        contract_dilation=read("backbone", backbone_cfg, "contract_dilation", True, False, _bool),
    )
    style = read("backbone", backbone_cfg, "style", "pytorch", "pytorch", _style)
    if layout.output_stride != output_stride:
        stated = ", ".join(read.used[used_before:])
        raise UserError(
            f"{path}: the checkpoint's config ({stated}) gives output stride {layout.output_stride}, "
            f"not the requested {output_stride}; set the output stride to {layout.output_stride}",
            key="teacher.output_stride",
        )
    last_blocks = STAGE_BLOCKS[depth][-1]
    if layout.multi_grid is not None and len(layout.multi_grid) < last_blocks:
        raise checkpoint_error(
            path, f"its config's multi_grid {layout.multi_grid} is shorter than the last stage ({last_blocks} blocks)",
            EXPECTED,
        )
    return layout, style == "caffe"


def _read_head_options(
    path: str, read: _ConfigReader, head_cfg: Any, weights: _HeadWeights, output_stride: int
) -> dict[str, Any]:
    if weights.head == "deeplabv3":
        standard = _STANDARD_ASPP_DILATIONS[output_stride]
        options = {"dilations": read("decode_head", head_cfg, "dilations", standard, (1, 6, 12, 18), _int_tuple(None))}
        count, name = len(options["dilations"]), "ASPP dilations"
    elif weights.head == "pspnet":
        options = {"pool_scales": read("decode_head", head_cfg, "pool_scales", _POOL_SCALES, _POOL_SCALES,
                                       _int_tuple(None))}
        count, name = len(options["pool_scales"]), "PSP pool scales"
    else:
        dilation = read("decode_head", head_cfg, "dilation", _STANDARD_FCN_DILATION[output_stride], 1, _positive_int)
        options = {"num_convs": weights.branches, "kernel_size": weights.kernel_size, "dilation": dilation,
                   "concat_input": weights.concat_input}
        count, name = weights.branches, "FCN convs"
    if count != weights.branches:
        raise checkpoint_error(
            path, f"its decode head has {weights.branches} branches but {count} {name} apply", EXPECTED
        )
    return options


def _read_normalization(
    config: Mapping[str, Any], model: Any, used: list[str]
) -> tuple[tuple[float, float, float], tuple[float, float, float], bool]:
    """Mean, std (0-255, in the model's channel order) and whether the model expects BGR input."""
    candidates = (
        ("model.data_preprocessor", lookup(model, "data_preprocessor"), ("bgr_to_rgb", "rgb_to_bgr"), False),
        ("data_preprocessor", lookup(config, "data_preprocessor"), ("bgr_to_rgb", "rgb_to_bgr"), False),
        ("img_norm_cfg", lookup(config, "img_norm_cfg"), ("to_rgb",), True),
    )
    for name, section, flip_keys, rgb_by_default in candidates:
        if not isinstance(section, Mapping):
            continue
        mean, std = _triple(section.get("mean")), _triple(section.get("std"))
        flags = [section[key] for key in flip_keys if key in section]
        if mean is None or std is None or min(std) <= 0 or any(not isinstance(f, bool) for f in flags):
            continue
        used.append(f"{name}.mean/std")
        return mean, std, not (any(flags) if flags else rgb_by_default)
    return MMSEG_MEAN, MMSEG_STD, False


def _read_backbone(path: str, state: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """(depth, stem channels, base channels) of a ResNetV1c backbone."""
    modules = sorted({key.split(".")[1] for key in state if key.startswith("backbone.") and key.count(".") >= 2})
    if "backbone.stem.0.weight" not in state:
        if not modules:
            problem = "has no backbone.* weights"
        elif "conv1" in modules:
            problem = "has a ResNetV1b backbone (a 7x7 stem, backbone.conv1), not ResNetV1c (backbone.stem.*)"
        else:
            problem = f"has a backbone that is no ResNetV1c (its modules: {preview(modules)})"
        raise checkpoint_error(path, problem, EXPECTED)
    if "backbone.layer1.0.downsample.2.weight" in state:
        raise checkpoint_error(path, "has a ResNetV1d backbone (average-pool shortcuts), not ResNetV1c", EXPECTED)
    stem_channels = _conv_shape(path, state, "backbone.stem.6.weight")[0]
    base_channels = _conv_shape(path, state, "backbone.layer1.0.conv1.weight")[0]
    counts = tuple(
        len({key.split(".")[2] for key in state if key.startswith(f"backbone.layer{stage}.")}) for stage in range(1, 5)
    )
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    for depth, blocks in STAGE_BLOCKS.items():
        if blocks == counts and (depth in BOTTLENECK_DEPTHS) == bottleneck:
            return depth, stem_channels, base_channels
    kind = "Bottleneck" if bottleneck else "BasicBlock"
    raise checkpoint_error(path, f"has {counts} {kind} blocks per stage, which is no ResNetV1c depth", EXPECTED)


def _read_head(path: str, state: Mapping[str, torch.Tensor]) -> _HeadWeights:
    prefix = "decode_head."
    keys = {key[len(prefix) :] for key in state if key.startswith(prefix)}
    if not keys:
        raise checkpoint_error(path, "has no decode_head.* weights", EXPECTED)
    if any("depthwise_conv" in key for key in keys) or "c1_bottleneck.conv.weight" in keys:
        raise checkpoint_error(path, "has a DeepLabV3+ head (DepthwiseSeparableASPPHead), not supported", EXPECTED)
    num_classes, channels = _conv_shape(path, state, prefix + "conv_seg.weight")[:2]

    def count(group: str) -> int:
        return len({key.split(".")[1] for key in keys if key.startswith(group + ".")})

    if "image_pool.1.conv.weight" in keys:
        in_channels = _conv_shape(path, state, prefix + "image_pool.1.conv.weight")[1]
        return _HeadWeights("deeplabv3", num_classes, in_channels, channels, count("aspp_modules"))
    if "psp_modules.0.1.conv.weight" in keys:
        in_channels = _conv_shape(path, state, prefix + "psp_modules.0.1.conv.weight")[1]
        return _HeadWeights("pspnet", num_classes, in_channels, channels, count("psp_modules"))
    if "convs.0.conv.weight" in keys:
        shape = _conv_shape(path, state, prefix + "convs.0.conv.weight")
        concat = "conv_cat.conv.weight" in keys
        return _HeadWeights("fcn", num_classes, shape[1], channels, count("convs"), shape[-1], concat)
    modules = sorted({key.split(".")[0] for key in keys})
    problem = f"has a decode head that is none of ASPPHead, PSPHead, FCNHead (its modules: {preview(modules)})"
    raise checkpoint_error(path, problem, EXPECTED)


def _check_config_types(path: str, model: Any, backbone_cfg: Any, head_cfg: Any, head: str) -> None:
    """The config's type names, where stated, must be what the weights show."""
    stated = (
        ("model", lookup(model, "type"), ("EncoderDecoder",)),
        ("backbone", lookup(backbone_cfg, "type"), ("ResNetV1c",)),
        ("decode head", lookup(head_cfg, "type"), (HEAD_TYPES[head],)),
    )
    for part, name, accepted in stated:
        if isinstance(name, str) and name.split(".")[-1] not in accepted:
            problem = f"its config names the {part} type {name!r} (weights: {accepted[0]})"
            raise checkpoint_error(path, problem, EXPECTED)


def _conv_shape(path: str, state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise checkpoint_error(path, f"lacks {key}", EXPECTED)
    shape = tuple(state[key].shape)
    if len(shape) != 4:
        raise checkpoint_error(path, f"has {key} of shape {shape}, not a 4-d conv weight", EXPECTED)
    return shape


def _meta_config(meta: Any) -> Mapping[str, Any]:
    if not isinstance(meta, Mapping):
        return {}
    for key in ("config", "cfg"):
        text = meta.get(key)
        if isinstance(text, str):
            return parse_config_text(text)
        if isinstance(text, Mapping):
            return text
    return {}


def _class_names(meta: Any, num_classes: int) -> tuple[str, ...] | None:
    names = lookup(meta, "CLASSES") if isinstance(meta, Mapping) else UNKNOWN
    if names is UNKNOWN:
        names = lookup(meta, "dataset_meta", "classes") if isinstance(meta, Mapping) else UNKNOWN
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


# Converters of config values: the value in the form the loader uses, or UNKNOWN when it is not valid.


def _positive_int(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else UNKNOWN


def _int_tuple(length: int | None) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not value or (length is not None and len(value) != length):
            return UNKNOWN
        return tuple(value) if all(_positive_int(v) is not UNKNOWN for v in value) else UNKNOWN

    return convert


def _optional_multi_grid(value: Any) -> Any:
    return None if value is None else _int_tuple(None)(value)


def _stage_index(value: Any) -> Any:
    return value % 4 if isinstance(value, int) and not isinstance(value, bool) and -4 <= value < 4 else UNKNOWN


def _style(value: Any) -> Any:
    return value if value in ("pytorch", "caffe") else UNKNOWN


def _bool(value: Any) -> Any:
    return value if isinstance(value, bool) else UNKNOWN


def _triple(value: Any) -> tuple[float, float, float] | None:
    numbers = isinstance(value, (list, tuple)) and len(value) == 3
    if numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return (float(value[0]), float(value[1]), float(value[2]))
    return None
