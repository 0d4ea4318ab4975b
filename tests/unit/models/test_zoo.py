"""Model-zoo teachers (mmsegmentation, torchvision) loaded from synthetic checkpoints, and the PSPNet student head.

The mmseg checkpoints are written here key by key from mmseg's naming (ResNetV1c `backbone.stem.*`,
`backbone.layerI.J.*`, ConvModule `conv`/`bn`, `decode_head.conv_seg`, `auxiliary_head.*`), with random
weights and small widths. The loaded model is compared with a functional re-implementation written below
with torch.nn.functional only, from the key names and mmseg's published strides/dilations, in float64.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import segmentation

from fakd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fakd.errors import UserError
from fakd.models import TORCHVISION_ARCHS, build_segmenter, load_mmseg, load_torchvision
from fakd.models.zoo.checkpoint import read_checkpoint
from fakd.models.zoo.config_text import UNKNOWN, parse_config_text
from fakd.models.zoo.mmseg_heads import EncoderDecoder, PSPHead
from fakd.models.zoo.normalization import InputRenormalization
from fakd.models.zoo.resnet_v1c import BasicBlock, Bottleneck, ResNetV1c

NUM_CLASSES = 5
BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
WIDTH = 8  # stem and base channels of the synthetic ResNetV1c (64 in mmseg's models)
HEAD_CHANNELS = 8


# ---------------------------------------------------------------------------------------------- checkpoints


def _conv(state: dict[str, torch.Tensor], key: str, out_c: int, in_c: int, k: int, gen: torch.Generator,
          bias: bool = False) -> None:
    state[f"{key}.weight"] = torch.randn(out_c, in_c, k, k, generator=gen) * (2.0 / (in_c * k * k)) ** 0.5
    if bias:
        state[f"{key}.bias"] = torch.randn(out_c, generator=gen) * 0.1


def _bn(state: dict[str, torch.Tensor], key: str, channels: int, gen: torch.Generator) -> None:
    state[f"{key}.weight"] = 0.5 + 0.5 * torch.rand(channels, generator=gen)
    state[f"{key}.bias"] = torch.randn(channels, generator=gen) * 0.1
    state[f"{key}.running_mean"] = torch.randn(channels, generator=gen) * 0.1
    state[f"{key}.running_var"] = 0.5 + torch.rand(channels, generator=gen)
    state[f"{key}.num_batches_tracked"] = torch.tensor(1000)


def _conv_module(state: dict[str, torch.Tensor], key: str, out_c: int, in_c: int, k: int,
                 gen: torch.Generator) -> None:
    _conv(state, f"{key}.conv", out_c, in_c, k, gen)
    _bn(state, f"{key}.bn", out_c, gen)


def mmseg_state(depth: int, head: str, seed: int = 0, aux: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under exactly the keys/shapes of an mmseg EncoderDecoder (ResNetV1c + `head`)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    half = WIDTH // 2
    for index, (out_c, in_c) in zip((0, 3, 6), ((half, 3), (half, half), (WIDTH, half)), strict=True):
        _conv(state, f"backbone.stem.{index}", out_c, in_c, 3, gen)
        _bn(state, f"backbone.stem.{index + 1}", out_c, gen)
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    inplanes, stage_out = WIDTH, []
    for stage, count in enumerate(BLOCKS[depth]):
        planes = WIDTH * 2**stage
        out = planes * expansion
        for block in range(count):
            key = f"backbone.layer{stage + 1}.{block}"
            cin = inplanes if block == 0 else out
            if bottleneck:
                shapes = ((planes, cin, 1), (planes, planes, 3), (out, planes, 1))
            else:
                shapes = ((planes, cin, 3), (planes, planes, 3))
            for number, (o, i, k) in enumerate(shapes, start=1):
                _conv(state, f"{key}.conv{number}", o, i, k, gen)
                _bn(state, f"{key}.bn{number}", o, gen)
            if block == 0 and (stage > 0 or inplanes != out):
                _conv(state, f"{key}.downsample.0", out, inplanes, 1, gen)
                _bn(state, f"{key}.downsample.1", out, gen)
        inplanes = out
        stage_out.append(out)
    top, ch = stage_out[3], HEAD_CHANNELS
    prefix = "decode_head"
    if head == "deeplabv3":
        _conv_module(state, f"{prefix}.image_pool.1", ch, top, 1, gen)
        for index, k in enumerate((1, 3, 3, 3)):
            _conv_module(state, f"{prefix}.aspp_modules.{index}", ch, top, k, gen)
        _conv_module(state, f"{prefix}.bottleneck", ch, 5 * ch, 3, gen)
    elif head == "pspnet":
        for index in range(4):
            _conv_module(state, f"{prefix}.psp_modules.{index}.1", ch, top, 1, gen)
        _conv_module(state, f"{prefix}.bottleneck", ch, top + 4 * ch, 3, gen)
    else:
        _conv_module(state, f"{prefix}.convs.0", ch, top, 3, gen)
        _conv_module(state, f"{prefix}.convs.1", ch, ch, 3, gen)
        _conv_module(state, f"{prefix}.conv_cat", ch, top + ch, 3, gen)
    _conv(state, f"{prefix}.conv_seg", NUM_CLASSES, ch, 1, gen, bias=True)
    if aux:
        _conv_module(state, "auxiliary_head.convs.0", ch, stage_out[2], 3, gen)
        _conv(state, "auxiliary_head.conv_seg", NUM_CLASSES, ch, 1, gen, bias=True)
    return state


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> str:
    torch.save({"state_dict": state, "meta": meta if meta is not None else {"mmseg_version": "0.30.0"}}, path)
    return str(path)


# ---------------------------------------------------------------------------------- functional reference
# mmseg ResNetV1c-D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation (first block of a
# dilated stage uses half); D16: strides (1, 2, 2, 1), dilations (1, 1, 1, 2); multi_grid sets the last
# stage's block dilations outright. BasicBlock dilates conv1 only.

REF_STRIDES = {8: (1, 2, 1, 1), 16: (1, 2, 2, 1)}
REF_FIRST_AND_REST = {8: ((1, 1), (1, 1), (1, 2), (2, 4)), 16: ((1, 1), (1, 1), (1, 1), (1, 2))}


def ref_dilations(output_stride: int, stage: int, count: int, multi_grid: Sequence[int] | None) -> list[int]:
    if stage == 3 and multi_grid:
        return list(multi_grid[:count])
    first, rest = REF_FIRST_AND_REST[output_stride][stage]
    return [first] + [rest] * (count - 1)


def ref_bn(x: torch.Tensor, s: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return F.batch_norm(x, s[f"{key}.running_mean"], s[f"{key}.running_var"], s[f"{key}.weight"],
                        s[f"{key}.bias"], training=False, eps=1e-5)


def ref_cbr(x: torch.Tensor, s: dict[str, torch.Tensor], key: str, padding: int = 0, dilation: int = 1
            ) -> torch.Tensor:
    return F.relu(ref_bn(F.conv2d(x, s[f"{key}.conv.weight"], None, 1, padding, dilation), s, f"{key}.bn"))


def ref_block(x: torch.Tensor, s: dict[str, torch.Tensor], key: str, stride: int, dilation: int) -> torch.Tensor:
    shortcut = x
    if f"{key}.downsample.0.weight" in s:
        shortcut = ref_bn(F.conv2d(x, s[f"{key}.downsample.0.weight"], stride=stride), s, f"{key}.downsample.1")
    if f"{key}.conv3.weight" in s:  # Bottleneck, stride on the 3x3 conv
        y = F.relu(ref_bn(F.conv2d(x, s[f"{key}.conv1.weight"]), s, f"{key}.bn1"))
        y = F.relu(ref_bn(F.conv2d(y, s[f"{key}.conv2.weight"], None, stride, dilation, dilation), s, f"{key}.bn2"))
        y = ref_bn(F.conv2d(y, s[f"{key}.conv3.weight"]), s, f"{key}.bn3")
    else:
        y = F.relu(ref_bn(F.conv2d(x, s[f"{key}.conv1.weight"], None, stride, dilation, dilation), s, f"{key}.bn1"))
        y = ref_bn(F.conv2d(y, s[f"{key}.conv2.weight"], None, 1, 1), s, f"{key}.bn2")
    return F.relu(y + shortcut)


def ref_backbone(x: torch.Tensor, s: dict[str, torch.Tensor], depth: int, output_stride: int,
                 multi_grid: Sequence[int] | None = None) -> list[torch.Tensor]:
    for conv, bn, stride in ((0, 1, 2), (3, 4, 1), (6, 7, 1)):
        x = F.relu(ref_bn(F.conv2d(x, s[f"backbone.stem.{conv}.weight"], None, stride, 1), s, f"backbone.stem.{bn}"))
    x = F.max_pool2d(x, 3, 2, 1)
    outputs = []
    for stage, count in enumerate(BLOCKS[depth]):
        dilations = ref_dilations(output_stride, stage, count, multi_grid)
        for block in range(count):
            stride = REF_STRIDES[output_stride][stage] if block == 0 else 1
            x = ref_block(x, s, f"backbone.layer{stage + 1}.{block}", stride, dilations[block])
        outputs.append(x)
    return outputs


def ref_encode_decode(images: torch.Tensor, s: dict[str, torch.Tensor], depth: int, head: str, output_stride: int,
                      *, multi_grid: Sequence[int] | None = None, aspp: Sequence[int] = (1, 12, 24, 36),
                      fcn_dilation: int = 1, align_corners: bool = False) -> torch.Tensor:
    x = ref_backbone(images, s, depth, output_stride, multi_grid)[3]
    size, p = x.shape[-2:], "decode_head"

    def up(t: torch.Tensor, to: Sequence[int]) -> torch.Tensor:
        return F.interpolate(t, size=tuple(to), mode="bilinear", align_corners=align_corners)

    if head == "deeplabv3":
        parts = [up(ref_cbr(F.adaptive_avg_pool2d(x, 1), s, f"{p}.image_pool.1"), size)]
        parts += [ref_cbr(x, s, f"{p}.aspp_modules.{i}", 0 if d == 1 else d, d) for i, d in enumerate(aspp)]
        y = ref_cbr(torch.cat(parts, 1), s, f"{p}.bottleneck", 1)
    elif head == "pspnet":
        parts = [x] + [up(ref_cbr(F.adaptive_avg_pool2d(x, scale), s, f"{p}.psp_modules.{i}.1"), size)
                       for i, scale in enumerate((1, 2, 3, 6))]
        y = ref_cbr(torch.cat(parts, 1), s, f"{p}.bottleneck", 1)
    else:
        y = ref_cbr(ref_cbr(x, s, f"{p}.convs.0", fcn_dilation, fcn_dilation), s, f"{p}.convs.1", fcn_dilation,
                    fcn_dilation)
        y = ref_cbr(torch.cat([x, y], 1), s, f"{p}.conv_cat", 1)
    logits = F.conv2d(y, s[f"{p}.conv_seg.weight"], s[f"{p}.conv_seg.bias"])
    return up(logits, images.shape[-2:])


def as_double(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


# ------------------------------------------------------------------------------------------------ mmseg


@pytest.mark.parametrize(
    ("depth", "head"),
    [(18, "deeplabv3"), (18, "pspnet"), (18, "fcn"), (50, "deeplabv3"), (50, "pspnet"), (50, "fcn"), (101, "fcn")],
)
def test_mmseg_reads_architecture_and_matches_reference(tmp_path: Path, depth: int, head: str) -> None:
    state = mmseg_state(depth, head)
    model = load_mmseg(save_checkpoint(tmp_path / "model.pth", state))
    arch = model.architecture
    assert (arch.depth, arch.head, arch.num_classes, model.num_classes) == (depth, head, NUM_CLASSES, NUM_CLASSES)
    assert (arch.stem_channels, arch.base_channels, arch.channels, arch.output_stride) == (WIDTH, WIDTH, 8, 8)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.renormalize.is_identity  # mmseg's standard mean/std on 0-255 == ImageNet's on 0-1
    block = BasicBlock if depth < 50 else Bottleneck
    assert isinstance(model.network.backbone, ResNetV1c) and isinstance(model.network.backbone.layer1[0], block)
    loaded = model.network.state_dict()
    non_aux = {k for k in state if not k.startswith("auxiliary_head.")}
    assert set(loaded) == non_aux  # strict: every non-auxiliary key consumed, nothing else
    assert all(torch.equal(loaded[k], state[k]) for k in non_aux)

    size = (104, 112) if (depth, head) == (18, "deeplabv3") else (32, 40)  # 13 x 14 at the head: rates 12 apply
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, NUM_CLASSES, *size)
        expected = ref_encode_decode(images.double(), as_double(state), depth, head, 8)
        actual = model.double()(images.double())
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("head", ["deeplabv3", "pspnet", "fcn"])
def test_mmseg_output_stride_16_follows_standard_configs(tmp_path: Path, head: str) -> None:
    state = mmseg_state(18, head, seed=3)
    path = save_checkpoint(tmp_path / "model.pth", state)
    model8, model16 = load_mmseg(path, output_stride=8), load_mmseg(path, output_stride=16)
    assert (model8.architecture.output_stride, model16.architecture.output_stride) == (8, 16)
    side = 64 if head == "pspnet" else 208  # 13 x 13 at stride 16: ASPP rates 6, 12 and FCN dilation 6 apply
    images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        small = images[..., :64, :64]
        assert model8.network.backbone(small)[3].shape[-2:] == (8, 8)
        assert model16.network.backbone(small)[3].shape[-2:] == (4, 4)
        kwargs: dict[str, Any] = {}
        if head == "deeplabv3":  # deeplabv3_r101-d16-mg124: multi-grid (1, 2, 4), ASPP (1, 6, 12, 18)
            assert model16.architecture.layout.multi_grid == (1, 2, 4)
            assert model16.architecture.head_options["dilations"] == (1, 6, 12, 18)
            assert model8.architecture.head_options["dilations"] == (1, 12, 24, 36)
            kwargs = {"multi_grid": (1, 2, 4), "aspp": (1, 6, 12, 18)}
        if head == "fcn":  # fcn-d6_r50-d16: head convs dilated by 6
            assert model16.architecture.head_options["dilation"] == 6
            kwargs = {"fcn_dilation": 6}
        expected = ref_encode_decode(images.double(), as_double(state), 18, head, 16, **kwargs)
        torch.testing.assert_close(model16.double()(images.double()), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(UserError) as info:
        load_mmseg(path, output_stride=32)
    assert info.value.key == "teacher.output_stride"


CONFIG_0X = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet18_v1c',
    backbone=dict(
        type='ResNetV1c',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    decode_head=dict(
        type='ASPPHead',
        in_channels=512,
        in_index=3,
        channels=128,
        dilations=(1, 3, 6, 9),
        dropout_ratio=0.1,
        num_classes=5,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=True,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels=256, in_index=2, channels=64, num_convs=1),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
lr_config = dict(policy='poly', power=0.9, min_lr=1e-4, by_epoch=False)
warmup_ratio = 1 / 200
"""


def test_mmseg_config_text_values_are_used(tmp_path: Path) -> None:
    state = mmseg_state(18, "deeplabv3", seed=5)
    meta = {"config": CONFIG_0X, "CLASSES": tuple(f"class{i}" for i in range(NUM_CLASSES)), "seed": 0}
    model = load_mmseg(save_checkpoint(tmp_path / "model.pth", state, meta))
    arch = model.architecture
    assert arch.head_options["dilations"] == (1, 3, 6, 9) and arch.align_corners is True
    assert {"decode_head.dilations", "decode_head.align_corners", "backbone.strides"} <= set(arch.from_config)
    assert model.class_names == tuple(f"class{i}" for i in range(NUM_CLASSES))
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref_encode_decode(images.double(), as_double(state), 18, "deeplabv3", 8, aspp=(1, 3, 6, 9),
                                     align_corners=True)
        torch.testing.assert_close(model.double()(images.double()), expected, rtol=1e-9, atol=1e-9)


def test_mmseg_config_of_another_output_stride_is_an_error(tmp_path: Path) -> None:
    config = CONFIG_0X.replace("dilations=(1, 1, 2, 4)", "dilations=(1, 1, 1, 2)")
    config = config.replace("strides=(1, 2, 1, 1)", "strides=(1, 2, 2, 1)")
    path = save_checkpoint(tmp_path / "d16.pth", mmseg_state(18, "deeplabv3"), {"config": config})
    with pytest.raises(UserError) as info:
        load_mmseg(path, output_stride=8)
    assert info.value.key == "teacher.output_stride" and "output stride 16" in info.value.message
    assert load_mmseg(path, output_stride=16).architecture.output_stride == 16


def test_mmseg_config_text_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    hostile = (
        f"import os\nos.system('touch {marker}')\nx = __import__('os').system('touch {marker}')\n"
        f"y = open('{marker}', 'w')\n" + CONFIG_0X.replace("align_corners=True", "align_corners=__import__('os')")
    )
    parsed = parse_config_text(hostile)
    assert parsed["x"] is UNKNOWN and parsed["y"] is UNKNOWN and parsed["warmup_ratio"] is UNKNOWN
    assert parsed["model"]["decode_head"]["dilations"] == (1, 3, 6, 9)
    path = save_checkpoint(tmp_path / "model.pth", mmseg_state(18, "deeplabv3"), {"config": hostile})
    model = load_mmseg(path)
    assert not marker.exists()
    assert model.architecture.head_options["dilations"] == (1, 3, 6, 9)
    assert model.architecture.align_corners is False  # unreadable value -> mmseg's standard
    assert parse_config_text("model = dict(\n") == {}  # a syntax error leaves every default in place


def test_mmseg_renormalises_to_the_checkpoint_mean_std_and_channel_order(tmp_path: Path) -> None:
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)  # BGR order: the model is fed BGR images
    cfg_1x = (
        "data_preprocessor = dict(type='SegDataPreProcessor', mean=[100.0, 110.0, 120.0], "
        "std=[50.0, 60.0, 70.0], bgr_to_rgb=False, pad_val=0, seg_pad_val=255)\n"
        "model = dict(type='EncoderDecoder', data_preprocessor=data_preprocessor,\n"
        "    backbone=dict(type='ResNetV1c', depth=18, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),\n"
        "                  contract_dilation=True),\n"
        "    decode_head=dict(type='PSPHead', pool_scales=(1, 2, 3, 6), align_corners=False))\n"
    )
    path = save_checkpoint(tmp_path / "model.pth", mmseg_state(18, "pspnet"), {"cfg": cfg_1x})
    model = load_mmseg(path)
    assert (model.architecture.mean, model.architecture.std, model.architecture.bgr_input) == (mean, std, True)
    assert isinstance(model.network, EncoderDecoder) and isinstance(model.network.decode_head, PSPHead)
    assert isinstance(model.renormalize, InputRenormalization) and not model.renormalize.is_identity
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    harness = (pixels / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    mmseg_input = (pixels.flip(1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model.renormalize(harness), mmseg_input, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model(harness), model.network(mmseg_input), rtol=1e-4, atol=1e-4)
    # A harness with other statistics is converted too: from its own normalisation to the model's.
    custom = load_mmseg(path, input_mean=(0.5, 0.5, 0.5), input_std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(custom.renormalize((pixels / 255 - 0.5) / 0.25), mmseg_input, rtol=1e-5, atol=1e-4)


def test_mmseg_standard_normalisation_is_a_no_op(tmp_path: Path) -> None:
    model = load_mmseg(save_checkpoint(tmp_path / "m.pth", mmseg_state(18, "fcn"), {"config": CONFIG_0X.replace(
        "type='ASPPHead'", "type='FCNHead'")}))
    images = torch.randn(1, 3, 32, 32)
    assert model.renormalize.is_identity and model.renormalize(images) is images
    assert "img_norm_cfg.mean/std" in model.architecture.from_config


# ----------------------------------------------------------------------------------------------- errors


def _error(path: Path | str, loader: Any = load_mmseg, *args: Any) -> UserError:
    with pytest.raises(UserError) as info:
        loader(*args, str(path)) if args else loader(str(path))
    error = info.value
    assert error.key == "teacher.checkpoint"
    assert str(path) in error.message and "expected" in error.message and "\n" not in error.message
    return error


class CreatesFile:
    """Unpickling this would create a file: the payload a weights-only load must refuse."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.target), "w")


def test_garbage_and_malicious_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint \xff" * 10)
    assert "not a readable PyTorch checkpoint" in _error(garbage).message
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _error(empty)

    target = tmp_path / "pwned"
    malicious = tmp_path / "malicious.pth"
    torch.save({"state_dict": mmseg_state(18, "fcn"), "meta": {"x": CreatesFile(target)}}, malicious)
    assert not target.exists()
    assert "pickles io.open" in _error(malicious).message  # open() pickles as io.open
    assert "pickles io.open" in _error(malicious, load_torchvision, "lraspp_mobilenet_v3_large").message
    assert not target.exists()

    raw = tmp_path / "raw.pkl"  # a plain pickle, not torch.save's format
    raw.write_bytes(pickle.dumps(CreatesFile(target), protocol=2))
    _error(raw)
    with pytest.raises(UserError, match="expected a state dict"):  # the reader every zoo loader goes through
        read_checkpoint(raw, "a state dict")
    assert not target.exists()


def test_numpy_scalars_in_meta_are_accepted(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    meta = {"hook_msgs": {"best_score": np.float64(0.75), "best_iter": np.int64(4000)}}
    model = load_mmseg(save_checkpoint(tmp_path / "m.pth", mmseg_state(18, "fcn"), meta))
    assert model.num_classes == NUM_CLASSES


def test_missing_file_and_non_state_dicts(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found") as info:
        load_mmseg(tmp_path / "nope.pth")
    assert info.value.key == "teacher.checkpoint"
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    assert "not a state dict" in _error(listing).message
    no_weights = tmp_path / "meta_only.pth"
    torch.save({"meta": {"config": CONFIG_0X}, "epoch": 3}, no_weights)
    assert "no state dict of tensors" in _error(no_weights).message


def test_wrong_keys_and_shapes_are_named(tmp_path: Path) -> None:
    state = mmseg_state(18, "pspnet")
    missing = {k: v for k, v in state.items() if k != "decode_head.bottleneck.conv.weight"}
    assert "missing keys: decode_head.bottleneck.conv.weight" in _error(save_checkpoint(
        tmp_path / "missing.pth", missing)).message
    extra = dict(state, **{"neck.conv.weight": torch.zeros(1, 1, 1, 1)})
    assert "unexpected keys: neck.conv.weight" in _error(save_checkpoint(tmp_path / "extra.pth", extra)).message
    wrong = dict(state, **{"backbone.layer2.0.conv2.weight": torch.zeros(16, 16, 1, 1)})
    message = _error(save_checkpoint(tmp_path / "wrong.pth", wrong)).message
    assert "shape mismatches" in message and "backbone.layer2.0.conv2.weight" in message
    truncated = {k: v for k, v in state.items() if not k.startswith("backbone.layer3.1.")}
    assert "no ResNetV1c depth" in _error(save_checkpoint(tmp_path / "depth.pth", truncated)).message


def test_unsupported_backbones_and_heads_are_named(tmp_path: Path) -> None:
    state = mmseg_state(18, "deeplabv3")
    v1b = {k.replace("backbone.stem.0", "backbone.conv1"): v for k, v in state.items()
           if not k.startswith("backbone.stem.") or k.startswith("backbone.stem.0")}
    assert "ResNetV1b" in _error(save_checkpoint(tmp_path / "v1b.pth", v1b)).message
    plus = dict(state, **{"decode_head.c1_bottleneck.conv.weight": torch.zeros(8, 8, 1, 1),
                          "decode_head.aspp_modules.1.depthwise_conv.conv.weight": torch.zeros(8, 1, 3, 3)})
    assert "DeepLabV3+" in _error(save_checkpoint(tmp_path / "plus.pth", plus)).message
    other = {k: v for k, v in state.items() if not k.startswith("decode_head.")}
    other["decode_head.ocr.weight"] = torch.zeros(1)
    other["decode_head.conv_seg.weight"] = torch.zeros(NUM_CLASSES, 8, 1, 1)
    assert "none of ASPPHead, PSPHead, FCNHead" in _error(save_checkpoint(tmp_path / "ocr.pth", other)).message
    config = CONFIG_0X.replace("type='ResNetV1c'", "type='ResNeSt'")
    assert "'ResNeSt'" in _error(save_checkpoint(tmp_path / "cfg.pth", state, {"config": config})).message


# ------------------------------------------------------------------------------------------- torchvision


def _torchvision_reference(arch: str, aux: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {} if arch.startswith("lraspp") else {"aux_loss": aux}
    model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load could not pass unnoticed
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "wrapper"),
    [("lraspp_mobilenet_v3_large", None), ("deeplabv3_mobilenet_v3_large", "model"), ("fcn_resnet50", None),
     ("fcn_resnet101", "model"), ("deeplabv3_resnet50", None), ("deeplabv3_resnet101", None)],
)
def test_torchvision_matches_the_torchvision_model(tmp_path: Path, arch: str, wrapper: str | None) -> None:
    reference = _torchvision_reference(arch, aux=True)
    state = reference.state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    model = load_torchvision(arch, str(path), NUM_CLASSES)
    path.unlink()  # up to 245 MB (ResNet-101): pytest keeps three runs' temporary directories
    assert model.num_classes == NUM_CLASSES and model.renormalize.is_identity
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert set(model.network.model.state_dict()) == {k for k in state if not k.startswith("aux_classifier.")}
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, NUM_CLASSES, 32, 32)
        torch.testing.assert_close(logits, reference(images)["out"], rtol=0, atol=0)


def test_torchvision_class_count(tmp_path: Path) -> None:
    path = tmp_path / "lraspp.pth"
    torch.save(_torchvision_reference("lraspp_mobilenet_v3_large", aux=False).state_dict(), path)
    assert load_torchvision("lraspp_mobilenet_v3_large", str(path)).num_classes == NUM_CLASSES
    with pytest.raises(UserError) as info:
        load_torchvision("lraspp_mobilenet_v3_large", str(path), 19)
    assert info.value.key == "teacher.checkpoint"
    assert f"has {NUM_CLASSES} classes, not num_classes=19" in info.value.message
    assert "lacks the classifier weights" in _error(path, load_torchvision, "fcn_resnet50").message
    with pytest.raises(UserError, match="accepted: " + ", ".join(TORCHVISION_ARCHS)) as info:
        load_torchvision("deeplabv3_resnet18", str(path))
    assert info.value.key == "teacher.arch"


def test_mmseg_class_count_is_exposed(tmp_path: Path) -> None:
    model = load_mmseg(save_checkpoint(tmp_path / "m.pth", mmseg_state(18, "pspnet")))
    assert model.num_classes == NUM_CLASSES and model.class_names is None
    dataset_classes = 19
    assert model.num_classes != dataset_classes  # the caller compares and reports the mismatch


# ---------------------------------------------------------------------------------- real mmsegmentation


MMSEG_HEADS = {  # our head name: mmseg's decode head config at output stride 8 or 16 (its standard configs)
    "deeplabv3": lambda os: dict(type="ASPPHead", dilations=(1, 12, 24, 36) if os == 8 else (1, 6, 12, 18)),
    "pspnet": lambda os: dict(type="PSPHead", pool_scales=(1, 2, 3, 6)),
    "fcn": lambda os: dict(type="FCNHead", num_convs=2, concat_input=True, dilation=1 if os == 8 else 6),
}


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("head", list(MMSEG_HEADS))
@pytest.mark.parametrize("depth", [18, 50, 101])
def test_matches_real_mmsegmentation_when_installed(tmp_path: Path, depth: int, head: str, output_stride: int) -> None:
    """Dev-only: the same weights through mmsegmentation's own EncoderDecoder.encode_decode, configured as its
    standard configs are (D8: *_r50-d8; D16: deeplabv3_r101-d16-mg124, fcn-d6_r50-d16, pspnet_r50-d16 strides),
    max abs difference ≤ 1e-4 in float32, on images large enough (208 px) that every dilation reaches pixels."""
    try:
        import mmseg  # noqa: F401
        from mmengine.config import ConfigDict
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    except Exception as error:  # mmseg/mmcv absent, or mmcv's compiled ops missing
        pytest.skip(f"mmsegmentation is not importable ({type(error).__name__}); mmcv's compiled ops do not "
                    "install here, so the comparison with real mmseg runs only where it is installed")
    register_all_modules()
    state = mmseg_state(depth, head)
    norm = dict(type="BN", requires_grad=True)
    expansion = 4 if depth >= 50 else 1
    d8 = output_stride == 8
    cfg = ConfigDict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=depth, stem_channels=WIDTH, base_channels=WIDTH, num_stages=4,
                      out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4) if d8 else (1, 1, 1, 2),
                      strides=(1, 2, 1, 1) if d8 else (1, 2, 2, 1), norm_cfg=norm, style="pytorch",
                      contract_dilation=True, multi_grid=None if d8 or head != "deeplabv3" else (1, 2, 4)),
        decode_head=dict(MMSEG_HEADS[head](output_stride), in_channels=WIDTH * 8 * expansion, in_index=3,
                         channels=HEAD_CHANNELS, num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False),
        auxiliary_head=dict(type="FCNHead", in_channels=WIDTH * 4 * expansion, in_index=2, channels=HEAD_CHANNELS,
                            num_convs=1, concat_input=False, num_classes=NUM_CLASSES, norm_cfg=norm),
        test_cfg=dict(mode="whole"),
    )
    reference = MODELS.build(cfg)
    reference.load_state_dict(state, strict=True)
    reference.eval()
    model = load_mmseg(save_checkpoint(tmp_path / "m.pth", state), output_stride=output_stride)
    images = torch.randn(2, 3, 208, 208, generator=torch.Generator().manual_seed(1))
    metas = [dict(img_shape=(208, 208), ori_shape=(208, 208), pad_shape=(208, 208))] * 2
    with torch.no_grad():
        ours, theirs = model(images), reference.encode_decode(images, metas)
    assert ours.shape == theirs.shape == (2, NUM_CLASSES, 208, 208)
    assert (ours - theirs).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------------------- PSPNet student


def test_pspnet_student_head_trains_with_batch_two_and_one_and_evaluates() -> None:
    torch.manual_seed(0)
    model = build_segmenter("test_resnet", NUM_CLASSES, head="psp", output_stride=8, head_channels=16)
    assert model.head_name == "psp" and model.feature_dim == 16
    assert model.classifier_weight.shape == (NUM_CLASSES, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.head.classifier.weight.detach().clone()
    for batch in (2, 1):  # batch size 1: the 1x1 pyramid level has no BatchNorm
        model.train()
        images = torch.randn(batch, 3, 32, 32)
        labels = torch.randint(0, NUM_CLASSES, (batch, 32, 32))
        out = model(images)
        torch.testing.assert_close(model.classify(out.features), out.logits)
        loss = F.cross_entropy(F.interpolate(out.logits, size=(32, 32), mode="bilinear"), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(before, model.head.classifier.weight)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.logits.shape == (1, NUM_CLASSES, 4, 4) and out.features.shape == (1, 16, 4, 4)
    pyramid = model.head.body[0]
    assert pyramid.scales == (1, 2, 3, 6) and pyramid.out_channels == model.backbone.feature_info.channels()[-1] + 64
