"""Segmenters on timm backbones: shapes, the classifier contract, stride/name errors, pretrained loading."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from fakd.errors import UserError
from fakd.models import SegmenterOutput, build_segmenter, count_parameters
from fakd.models.heads import aspp_rates

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    ("backbone", "head", "output_stride"),
    [
        ("resnet18", "deeplabv3", 8),
        ("resnet18", "fcn", 16),
        ("resnet18", "fcn", 32),
        ("mobilenetv3_small_050", "deeplabv3", 16),
        ("mobilenetv3_small_050", "fcn", 8),
        ("test_efficientnet", "deeplabv3", 32),
        ("test_efficientnet", "fcn", 8),
    ],
)
def test_output_shapes_and_classifier_contract(backbone: str, head: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = build_segmenter(backbone, NUM_CLASSES, head=head, output_stride=output_stride, head_channels=32).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
    side = 64 // output_stride
    assert isinstance(out, SegmenterOutput)
    assert out.logits.shape == (2, NUM_CLASSES, side, side)
    assert out.features.shape == (2, 32, side, side)
    assert (model.num_classes, model.feature_dim, model.output_stride) == (NUM_CLASSES, 32, output_stride)
    assert model.backbone_name == backbone
    weight = model.classifier_weight
    assert weight.shape == (NUM_CLASSES, 32)
    assert weight.data_ptr() == model.head.classifier.weight.data_ptr()  # a view, not a copy
    recomputed = F.conv2d(out.features, weight[..., None, None], model.head.classifier.bias)
    torch.testing.assert_close(recomputed, out.logits)
    assert model.predict(images).shape == (2, NUM_CLASSES, 64, 64)


def test_features_are_the_classifier_input_in_train_mode() -> None:
    torch.manual_seed(0)
    model = build_segmenter("resnet18", NUM_CLASSES, head="deeplabv3", output_stride=16, head_channels=16).train()
    out = model(torch.randn(2, 3, 32, 32))  # dropout active: logits must still come from these features
    torch.testing.assert_close(model.classify(out.features), out.logits)
    out.logits.sum().backward()
    assert model.head.classifier.weight.grad is not None
    assert model.backbone_features(torch.randn(1, 3, 32, 32)).shape[1] == 512


def test_deeplab_rates_follow_output_stride() -> None:
    def rates(output_stride: int) -> list[int]:
        model = build_segmenter("resnet18", 3, output_stride=output_stride, head_channels=8)
        return [branch[0].dilation[0] for branch in model.head.body[0].branches[1:4]]

    assert rates(16) == [6, 12, 18] == list(aspp_rates(16))
    assert rates(8) == [12, 24, 36] == list(aspp_rates(8))
    assert rates(32) == [3, 6, 9] == list(aspp_rates(32))


def test_count_parameters() -> None:
    model = build_segmenter("mobilenetv3_small_050", 3, head="fcn", head_channels=8)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters()) > 0
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model.head)


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(UserError) as info:
        build_segmenter("resnet181", 3)
    assert info.value.key == "backbone"
    assert "not a timm model name" in info.value.message
    assert "resnet18" in info.value.message


def test_unknown_head_lists_accepted() -> None:
    with pytest.raises(UserError) as info:
        build_segmenter("resnet18", 3, head="unet")
    assert info.value.key == "head"
    assert "deeplabv3" in info.value.message and "fcn" in info.value.message


@pytest.mark.parametrize("stride", [4, 12, 64])
def test_unsupported_stride_value_lists_accepted(stride: int) -> None:
    with pytest.raises(UserError) as info:
        build_segmenter("resnet18", 3, output_stride=stride)
    assert info.value.key == "output_stride"
    assert "8, 16, 32" in info.value.message


def test_backbone_without_dilation_names_supported_strides() -> None:
    with pytest.raises(UserError) as info:
        build_segmenter("test_vit", 3, output_stride=8)  # a ViT rejects timm's output_stride kwarg
    assert info.value.key == "output_stride"
    assert "test_vit" in info.value.message and "supports: 16" in info.value.message
    model = build_segmenter("test_vit", 3, output_stride=16, head="fcn", head_channels=8).eval()
    assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3, 4, 4)


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    state = timm.create_model("resnet18").state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return str(path), state


def test_pretrained_from_local_file(saved_resnet: tuple[str, dict[str, torch.Tensor]]) -> None:
    path, state = saved_resnet
    torch.manual_seed(0)  # a different seed: equality below can only come from the file
    model = build_segmenter("resnet18", 3, pretrained=path, head="fcn", head_channels=8)
    loaded = model.backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.bn1.running_var"):
        assert torch.equal(loaded[key], state[key])


def test_pretrained_file_of_another_model_names_keys(
    saved_resnet: tuple[str, dict[str, torch.Tensor]], tmp_path
) -> None:
    path, state = saved_resnet
    broken = {k: v for k, v in state.items() if not k.startswith("layer2.")}
    broken["extra.weight"] = torch.zeros(1)
    bad_path = tmp_path / "broken.pth"
    torch.save(broken, bad_path)
    with pytest.raises(UserError) as info:
        build_segmenter("resnet18", 3, pretrained=str(bad_path))
    message = info.value.message
    assert info.value.key == "pretrained"
    assert (
        str(bad_path) in message and "missing keys: layer2." in message and "unexpected keys: extra.weight" in message
    )


def test_pretrained_file_with_wrong_shapes(saved_resnet: tuple[str, dict[str, torch.Tensor]], tmp_path) -> None:
    _, state = saved_resnet
    wrong = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    bad_path = tmp_path / "wrong.pth"
    torch.save(wrong, bad_path)
    with pytest.raises(UserError, match="size mismatch for conv1.weight") as info:
        build_segmenter("resnet18", 3, pretrained=str(bad_path))
    assert info.value.key == "pretrained"


def test_pretrained_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError) as info:
        build_segmenter("resnet18", 3, pretrained=str(missing))
    assert info.value.key == "pretrained"
    assert info.value.message == f"weights file not found: {missing}"


def test_pretrained_download_offline_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:
        build_segmenter("resnet18", 3, pretrained=True)
    assert info.value.key == "pretrained"
    assert "could not be downloaded" in info.value.message and "local weights file" in info.value.message
