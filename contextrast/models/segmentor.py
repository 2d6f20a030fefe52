"""Segmentor = encoder + decode head (+ training-only auxiliary head), with named outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contextrast.models.encoders import TimmEncoder
from contextrast.models.heads import FCNHead

__all__ = [
    "SegmentationInference",
    "SegmentationOutput",
    "Segmentor",
    "convert_sync_batchnorm",
    "export_inference",
]


class SegmentationOutput(NamedTuple):
    """What a :class:`Segmentor` returns in training.

    logits: (B, N, H/s, W/s) at the model's ``output_stride`` s.
    features: the encoder maps [(B, C_i, H/s_i, W/s_i)], lowest layer first; the layers a
        contrastive loss attaches to (``model.feature_channels`` lists their C_i).
    aux_logits: (B, N, h, w) auxiliary logits (OCR's soft object regions, DeepLab's FCN head)
        or None.
    """

    logits: torch.Tensor
    features: list[torch.Tensor]
    aux_logits: torch.Tensor | None


class Segmentor(nn.Module):
    """Encoder + decode head, optionally an auxiliary FCN head on the third feature map.

    Attributes:
        feature_channels: channels of ``features``, lowest layer first (pass to the losses).
        feature_strides: their strides relative to the input.
        output_stride: stride of ``logits``.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        decode_head: nn.Module,
        num_classes: int,
        aux_head: FCNHead | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.feature_channels: list[int] = list(encoder.channels)
        self.feature_strides: list[int] = list(encoder.strides)
        self.output_stride: int = encoder.strides[decode_head.output_level]

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        """images: (B, 3, H, W), normalised."""
        features = self.encoder(images)
        logits, aux = self.decode_head(features)
        if self.aux_head is not None:
            aux = self.aux_head(features[-2])
        return SegmentationOutput(logits, features, aux)

    def inference(self) -> SegmentationInference:
        """The inference model: same encoder and decode head (shared, not copied), full-
        resolution logits only. No projection head or auxiliary head is in it."""
        return SegmentationInference(self.encoder, self.decode_head)


class SegmentationInference(nn.Module):
    """images (B, 3, H, W) -> logits (B, N, H, W), bilinearly upsampled."""

    def __init__(self, encoder: nn.Module, decode_head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.encoder(images))[0]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


#: The ONNX opset ``export_onnx`` writes (onnxruntime ≥ 1.14, TensorRT ≥ 8.6, OpenVINO ≥ 2023).
ONNX_OPSET = 18


def _export_plan(
    example: torch.Tensor, dynamic: bool
) -> tuple[torch.Tensor, dict[str, dict[int, object]] | None]:
    """The example to trace with and the dynamic shapes: any batch size, any H and W that
    are multiples of 32 from 64 up."""
    if not dynamic:
        return example, None
    height, width = example.shape[-2:]
    if height % 32 or width % 32:
        raise ValueError(
            f"export: example size {height}x{width} must be a multiple of 32 for a dynamic "
            "export (or pass dynamic=False)"
        )
    if example.shape[0] < 2 or min(height, width) < 64:
        # torch.export specialises a traced size of 1 (a batch of 1, or a 1-pixel map at
        # stride 32) to a constant: trace with at least 2 images of 64 × 64.
        example = example.new_zeros(
            max(2, example.shape[0]), example.shape[1], max(64, height), max(64, width)
        )
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = 32 * torch.export.Dim("height_32", min=2, max=512)
    width = 32 * torch.export.Dim("width_32", min=2, max=512)
    return example, {"images": {0: batch, 2: height, 3: width}}


def export_inference(
    model: Segmentor,
    path: str | os.PathLike,
    example: torch.Tensor,
    dynamic: bool = True,
) -> Path:
    """Export ``model.inference()`` with ``torch.export`` to a ``.pt2`` file.

    Args:
        model: the trained segmentor (its weights are exported in eval mode; its training
            mode is restored afterwards).
        path: output file.
        example: (B, 3, H, W) example input; H and W should be multiples of 32.
        dynamic: allow any batch size and any H, W that are multiples of 32 from 64 up.

    Returns:
        The path written. Load with ``torch.export.load(path).module()``.
    """
    example, shapes = _export_plan(example, dynamic)
    inference = model.inference()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(inference, (example,), dynamic_shapes=shapes)
    finally:
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path)
    return path


def export_onnx(
    model: Segmentor,
    path: str | os.PathLike,
    example: torch.Tensor,
    dynamic: bool = True,
    opset: int = ONNX_OPSET,
) -> Path:
    """Export ``model.inference()`` to ONNX (``torch.onnx.export`` through ``torch.export``,
    the ``onnxscript`` translator), for onnxruntime, TensorRT, OpenVINO.

    Args:
        model: the trained segmentor (exported in eval mode; its mode is restored).
        path: output ``.onnx`` file; the weights are inside it.
        example: (B, 3, H, W) example input; H and W multiples of 32.
        dynamic: dynamic batch, height and width (multiples of 32 from 64 up); ``False``
            fixes the example's shape.
        opset: the ONNX opset (default :data:`ONNX_OPSET`).

    Returns:
        The path written: one input ``images`` (B, 3, H, W) float32, one output ``logits``
        (B, N, H, W). No projection or auxiliary head is in it.
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx's translator; a clear error if missing)
    except ImportError:
        raise ValueError(
            "export --format onnx needs the 'onnxscript' and 'onnx' packages "
            "(pip install onnx onnxscript)"
        ) from None
    example, shapes = _export_plan(example, dynamic)
    inference = model.inference()
    was_training = model.training
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(
                inference,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=shapes,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                external_data=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    return path


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str) -> nn.Module:
    """BatchNorm → SyncBatchNorm for distributed training on CUDA devices.

    SyncBatchNorm only runs on CUDA; on any other device the model is returned unchanged
    (gloo on CPU keeps per-process BatchNorm statistics).
    """
    if torch.device(device).type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
