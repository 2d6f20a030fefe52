"""``create_model``: the paper's segmentation models by name, and any timm backbone."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from functools import partial

from contextrast.models.encoders import TimmEncoder
from contextrast.models.heads import ASPPHead, FCNHead, HRNetV2Head, OCRHead
from contextrast.models.segmentor import Segmentor

__all__ = ["GENERIC_PREFIX", "HEADS", "MODELS", "create_model", "list_models"]

Pretrained = bool | str | os.PathLike

#: ``create_model("tu-<timm name>", ...)`` builds a segmentor on any timm backbone.
GENERIC_PREFIX = "tu-"


def _head(
    kind: str, channels: Sequence[int], num_classes: int, width: int | None
) -> OCRHead | HRNetV2Head | ASPPHead:
    if kind == "hrnetv2":
        return HRNetV2Head(channels, num_classes, channels=width)
    if kind == "ocr":
        mid = 512 if width is None else width
        return OCRHead(channels, num_classes, mid_channels=mid, key_channels=mid // 2)
    if kind == "aspp":
        return ASPPHead(channels[-1], num_classes, channels=256 if width is None else width)
    raise ValueError(f"unknown head {kind!r}; choose from {sorted(HEADS)}")


HEADS = ("aspp", "hrnetv2", "ocr")


def _build(
    backbone: str,
    num_classes: int,
    pretrained: Pretrained = False,
    *,
    head: str,
    head_width: int | None = None,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    aux: bool = False,
) -> Segmentor:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {sorted(HEADS)}")
    if head_width is not None and not (isinstance(head_width, int) and head_width > 0):
        raise ValueError(f"head_width must be a positive int, got {head_width!r}")
    encoder = TimmEncoder(
        backbone, pretrained, out_indices=out_indices, output_stride=output_stride
    )
    decode = _head(head, encoder.channels, num_classes, head_width)
    aux_head = FCNHead(encoder.channels[-2], num_classes) if aux else None
    return Segmentor(encoder, decode, num_classes, aux_head)


#: Presets of the paper (§4.1) and their small CPU variants with the same structure.
MODELS: dict[str, Callable[..., Segmentor]] = {
    "deeplabv3_r101": partial(
        _build, "resnet101", head="aspp", out_indices=(1, 2, 3, 4), output_stride=8
    ),
    "deeplabv3_r18": partial(
        _build, "resnet18", head="aspp", head_width=128, out_indices=(1, 2, 3, 4), output_stride=8
    ),
    "hrnetv2_w48": partial(_build, "hrnet_w48", head="hrnetv2"),
    "hrnetv2_w18_small": partial(_build, "hrnet_w18_small_v2", head="hrnetv2"),
    "ocrnet_hrnetv2_w48": partial(_build, "hrnet_w48", head="ocr", head_width=512),
    "ocrnet_hrnetv2_w18_small": partial(_build, "hrnet_w18_small_v2", head="ocr", head_width=128),
}


def list_models() -> list[str]:
    """The preset names; any ``tu-<timm name>`` is accepted besides."""
    return sorted(MODELS)


def create_model(
    name: str, num_classes: int, pretrained: Pretrained = False, **kwargs
) -> Segmentor:
    """Build a segmentation model.

    Args:
        name: a preset (:data:`MODELS`) or ``"tu-<timm name>"`` for any timm backbone that
            supports ``features_only``.
        num_classes: N.
        pretrained: False; True for timm's ImageNet weights (downloads: needs internet); or
            the path of a local backbone state dict (timm or torchvision key names), loaded
            with ``weights_only=True``.
        **kwargs: ``aux=True`` adds DeepLab's FCN auxiliary head (training only). For
            ``tu-`` models also ``head`` ("hrnetv2" default, "ocr", "aspp"), ``head_width``,
            ``out_indices`` (default: the last four levels) and ``output_stride``.

    Returns:
        A :class:`~contextrast.models.Segmentor`.
    """
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(name, str) and name.startswith(GENERIC_PREFIX):
        builder = partial(_build, name[len(GENERIC_PREFIX) :], head=kwargs.pop("head", "hrnetv2"))
        allowed = {"head_width", "out_indices", "output_stride", "aux"}
    elif name in MODELS:
        builder = MODELS[name]
        allowed = {"aux"}
    else:
        raise ValueError(
            f"unknown model {name!r}; choose from {sorted(MODELS)} or "
            f"'{GENERIC_PREFIX}<timm backbone>'"
        )
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"create_model({name!r}) got unknown arguments {unknown}; allowed: {sorted(allowed)}"
        )
    assert set(allowed) <= set(inspect.signature(_build).parameters)
    return builder(num_classes, pretrained, **kwargs)
