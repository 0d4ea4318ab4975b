"""A segmenter = any timm backbone (last feature map, optionally dilated) + a segmentation head."""

from __future__ import annotations

import difflib
import os
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from fakd.errors import UserError
from fakd.models.heads import HEADS, SegmentationHead, build_head

OUTPUT_STRIDES = (8, 16, 32)


class SegmenterOutput(NamedTuple):
    """`logits` N x C x h x w at the head's stride; `features` N x D x h x w, the classifier's exact input."""

    logits: torch.Tensor
    features: torch.Tensor


class Segmenter(nn.Module):
    """timm feature extractor -> head ending in a 1x1 classifier conv over `feature_dim` channels."""

    def __init__(
        self,
        backbone: nn.Module,
        head: SegmentationHead,
        *,
        backbone_name: str,
        head_name: str,
        output_stride: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_name = backbone_name
        self.head_name = head_name
        self.output_stride = output_stride
        self.num_classes = head.classifier.out_channels
        self.feature_dim = head.classifier.in_channels
        self._channels_last = str(getattr(getattr(backbone, "output_fmt", ""), "value", "")) == "NHWC"

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, N x channels x h x w."""
        maps = self.backbone(images)
        last = list(maps.values())[-1] if isinstance(maps, dict) else maps[-1]
        return last.permute(0, 3, 1, 2) if self._channels_last else last

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        logits, features = self.head(self.backbone_features(images))
        return SegmenterOutput(logits, features)

    @property
    def classifier_weight(self) -> torch.Tensor:
        """The classifier weight as a C x D view of the parameter."""
        return self.head.classifier.weight.flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the final 1x1 classifier to N x D x h x w features."""
        return self.head.classifier(features)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits upsampled bilinearly to the input size."""
        logits = self.forward(images).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_segmenter(
    backbone: str,
    num_classes: int,
    head: str = "deeplabv3",
    output_stride: int = 8,
    pretrained: bool | str = False,
    head_channels: int = 256,
) -> Segmenter:
    """A segmenter on any timm backbone name; user mistakes raise `UserError` keyed by the argument name."""
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; accepted: {', '.join(HEADS)}", key="head")
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(
            f"output stride {output_stride!r} is not supported; accepted: {_listing(OUTPUT_STRIDES)}",
            key="output_stride",
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}", key="num_classes")
    if not isinstance(head_channels, int) or head_channels < 1:
        raise UserError(
            f"head_channels must be a positive integer, got {head_channels!r}", key="head_channels"
        )
    _check_backbone_name(backbone)
    stride_kwargs = _stride_kwargs(backbone, output_stride)
    features = _create_backbone(backbone, pretrained, stride_kwargs)
    channels = features.feature_info.channels()[-1]
    segmentation_head = build_head(head, channels, num_classes, output_stride, head_channels)
    return Segmenter(
        features, segmentation_head, backbone_name=backbone, head_name=head, output_stride=output_stride
    )


def _check_backbone_name(name: str) -> None:
    if isinstance(name, str) and timm.is_model(name):
        return
    names = timm.list_models()
    text = str(name).lower()
    pool = set(difflib.get_close_matches(text, names, n=8, cutoff=0.5))
    for part in sorted((p for p in text.replace("-", "_").split("_") if len(p) >= 4), key=len, reverse=True):
        pool.update(timm.list_models(f"*{part}*"))
        if pool:
            break
    score = {n: difflib.SequenceMatcher(None, text, n).ratio() for n in pool}
    close = sorted(pool, key=lambda n: (text not in n, -score[n], n))[:5]
    hint = (
        f"; close names: {', '.join(close)}" if close else "; see timm.list_models() for the accepted names"
    )
    raise UserError(f"{name!r} is not a timm model name{hint}", key="backbone")


def _meta_features(name: str, **kwargs: Any) -> nn.Module:
    """Build the feature extractor on the meta device: architecture and strides only, no memory."""
    with torch.device("meta"):
        return timm.create_model(name, features_only=True, out_indices=(-1,), **kwargs)


def _last_reduction(model: nn.Module) -> int:
    return int(model.feature_info.reduction()[-1])


def _stride_kwargs(name: str, output_stride: int) -> dict[str, int]:
    """The create_model kwargs that give `output_stride`, or a UserError naming the strides that work."""
    try:
        if _last_reduction(_meta_features(name, output_stride=output_stride)) == output_stride:
            return {"output_stride": output_stride}
    except Exception:  # many timm models reject or mishandle output_stride
        pass
    try:
        natural = _last_reduction(_meta_features(name))
    except Exception as error:
        raise UserError(
            f"timm cannot build {name!r} as a feature extractor (features_only): {_first_line(error)}",
            key="backbone",
        ) from error
    if natural == output_stride:
        return {}
    supported = _supported_strides(name, natural)
    raise UserError(
        f"backbone {name!r} cannot produce output stride {output_stride} (timm has no dilation for it); "
        f"it supports: {_listing(supported)}",
        key="output_stride",
    )


def _supported_strides(name: str, natural: int) -> list[int]:
    strides = {natural}
    for stride in OUTPUT_STRIDES:
        if stride < natural:
            try:
                if _last_reduction(_meta_features(name, output_stride=stride)) == stride:
                    strides.add(stride)
            except Exception:
                continue
    return sorted(strides)


def _create_backbone(name: str, pretrained: bool | str | None, stride_kwargs: dict[str, int]) -> nn.Module:
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=(-1,), **stride_kwargs)
    if pretrained is None or pretrained is False:
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained is True:
        return _create_downloaded(name, kwargs)
    if isinstance(pretrained, (str, os.PathLike)):
        return _create_from_file(name, os.fspath(pretrained), kwargs)
    raise UserError(
        f"pretrained must be false, true or the path of a local weights file, got {pretrained!r}",
        key="pretrained",
    )


def _create_downloaded(name: str, kwargs: dict[str, Any]) -> nn.Module:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file):
        raise UserError(
            f"timm publishes no pretrained weights for {name!r}; "
            "use pretrained: false or the path of a local weights file",
            key="pretrained",
        )
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:
        raise UserError(
            f"the pretrained weights of {name!r} could not be downloaded ({type(error).__name__}: "
            f"{_first_line(error)}); pass the path of a local weights file instead "
            "(pretrained: /path/to/weights.safetensors)",
            key="pretrained",
        ) from error


def _create_from_file(name: str, path: str, kwargs: dict[str, Any]) -> nn.Module:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}", key="pretrained")
    try:
        state = timm.models.load_state_dict(path)
    except Exception as error:
        raise UserError(
            f"cannot read weights file {path} ({type(error).__name__}: {_first_line(error)}); "
            "expected a .pth/.bin/.safetensors state dict",
            key="pretrained",
        ) from error
    _check_weight_keys(name, path, state)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
    except Exception as error:
        raise UserError(
            f"weights file {path} does not match timm model {name!r}: {_first_lines(error)}", key="pretrained"
        ) from error


def _check_weight_keys(name: str, path: str, state: dict[str, Any]) -> None:
    """Compare a file's keys with the full classification model's, ignoring classifier and BN counters."""
    with torch.device("meta"):
        reference = timm.create_model(name)
    classifier = reference.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))

    def relevant(keys: Any) -> set[str]:
        return {k for k in keys if not k.startswith(prefixes) and not k.endswith("num_batches_tracked")}

    expected, found = relevant(reference.state_dict()), relevant(state)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        pairs = (("missing", missing), ("unexpected", unexpected))
        details = [f"{label} keys: {_preview(keys)}" for label, keys in pairs if keys]
        raise UserError(
            f"weights file {path} does not match timm model {name!r} ({'; '.join(details)}); "
            "expected a state dict of the full timm classification model",
            key="pretrained",
        )


def _listing(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _preview(keys: list[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _first_lines(error: BaseException, count: int = 2) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:count]) if lines else type(error).__name__
