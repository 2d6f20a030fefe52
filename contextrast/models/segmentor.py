"""Segmentor = encoder + decode head (+ training-only auxiliary head), with named outputs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contextrast.models.encoders import TimmEncoder
from contextrast.models.heads import FCNHead

try:  # a private torch module: export works without it, only for fewer sizes
    import torch.fx.experimental._config as fx_config
except ImportError:  # pragma: no cover
    fx_config = None

__all__ = [
    "EXPORT_FORMATS",
    "PaddedInference",
    "SegmentationInference",
    "SegmentationOutput",
    "Segmentor",
    "convert_sync_batchnorm",
    "export_format",
    "export_inference",
    "export_onnx",
    "writable_path",
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

#: Export formats by file suffix.
EXPORT_FORMATS = {".pt2": "pt2", ".onnx": "onnx"}

#: The exported models pad their input to a multiple of this, as ``predict`` and ``eval``
#: do (``evaluation.inference.whole_logits``'s ``size_divisor``: HRNet's branches need it).
SIZE_DIVISOR = 32


class PaddedInference(SegmentationInference):
    """What ``predict`` computes per view, as one module (the exported graph): images
    (B, 3, H, W) of any size are zero-padded (the mean colour after normalisation) at the
    bottom and right to a multiple of ``size_divisor``, run through the inference model and
    the logits (B, N, H, W) cropped back. Same submodules and state-dict names as
    :class:`SegmentationInference`."""

    def __init__(
        self, encoder: nn.Module, decode_head: nn.Module, size_divisor: int = SIZE_DIVISOR
    ):
        super().__init__(encoder, decode_head)
        self.size_divisor = size_divisor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        d = self.size_divisor
        # Sizes as d·⌈H/d⌉ and the crop as a gather: every exported shape then holds for any
        # H, W (a slice or a negative pad would leave guards torch.export cannot prove).
        padded_h, padded_w = (height + d - 1) // d * d, (width + d - 1) // d * d
        padded = F.pad(images, (0, padded_w - width, 0, padded_h - height))
        logits = super().forward(padded)  # (B, N, padded H, padded W)
        rows = torch.arange(height, device=images.device)
        cols = torch.arange(width, device=images.device)
        return logits.index_select(2, rows).index_select(3, cols)


def export_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The export format of ``path``: its suffix's (``.pt2`` → "pt2", ``.onnx`` → "onnx"),
    or ``format`` where given (then any other suffix is allowed). Raises ``ValueError`` for
    an unknown suffix without a format, an unknown format, or a format that the suffix
    contradicts (ONNX under a .pt2 name, or the reverse)."""
    path = Path(path)
    formats = sorted(set(EXPORT_FORMATS.values()))
    if format is not None and format not in formats:
        raise ValueError(f"unknown export format {format!r}; choose from {formats}")
    if _is_dir(path):
        raise ValueError(_folder(path))
    implied = EXPORT_FORMATS.get(path.suffix.lower())
    if format is None:
        if implied is None:
            suffix = f"unknown suffix {path.suffix!r}" if path.suffix else "no suffix"
            raise ValueError(
                f"output {path}: {suffix}; name it .pt2 (torch.export program) or .onnx (ONNX)"
            )
        return implied
    if implied is not None and implied != format:
        raise ValueError(
            f"output {path} is a .{implied} name but the format is {format}; name it "
            f"{path.with_suffix('.' + format).name} or choose format {implied}"
        )
    return format


def _folder(path: Path) -> str:
    return f"output {path} is a folder; name a file in it, e.g. {path / 'model.pt2'}"


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long: writable_path says so
        return False


def writable_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path once its folder exists and a file can be written there; a
    one-line ``ValueError`` for a folder, a path under a file or an unwritable place."""
    path = Path(path)
    if _is_dir(path):
        raise ValueError(_folder(path))
    try:
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise ValueError(f"cannot write {path}: {above} is a file, not a folder")
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):  # the probe keeps an existing file's bytes
            pass
        if not existed:
            path.unlink()
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _export_plan(
    example: torch.Tensor, dynamic: bool
) -> tuple[torch.Tensor, dict[str, dict[int, object]] | None]:
    """The example to trace with and the dynamic shapes: any batch size, any H and W."""
    if not dynamic:
        return example, None
    height, width = example.shape[-2:]
    if example.shape[0] < 2 or min(height, width) < 64:
        # torch.export specialises a traced size of 1 (a batch of 1, or a 1-pixel map at
        # stride 32) to a constant: trace with at least 2 images of 64 × 64.
        example = example.new_zeros(
            max(2, example.shape[0]), example.shape[1], max(64, height), max(64, width)
        )
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=1, max=16384)
    width = torch.export.Dim("width", min=1, max=16384)
    return example, {"images": {0: batch, 2: height, 3: width}}


def _contiguous_input(module: nn.Module, inputs: tuple) -> tuple:
    return (inputs[0].contiguous(), *inputs[1:])


@contextlib.contextmanager
def _exporting(model: Segmentor, size_divisor: int):
    """The padded inference module in eval mode (the segmentor's mode is restored after),
    set up so that one trace holds for every batch size and every H, W:

    - size-oblivious shape reasoning: traced at 64 × 64, the graph also holds where a map is
      1 pixel (inputs of 32 or less), which torch.export would otherwise guard out;
    - contiguous convolution inputs (a no-op where they are already; OCR's object context
      is a transposed view): on channels-last-looking strides torch.export's convolution
      guards the batch size to be above 1.
    """
    if not (isinstance(size_divisor, int) and size_divisor >= 1):
        raise ValueError(f"size_divisor must be a positive int, got {size_divisor!r}")
    was_training = model.training
    # A new module is in training mode: eval() spares torch.onnx's warning about it.
    module = PaddedInference(model.encoder, model.decode_head, size_divisor).eval()
    model.eval()
    oblivious = (
        fx_config.patch(backed_size_oblivious=True)
        if fx_config is not None and hasattr(fx_config, "backed_size_oblivious")
        else contextlib.nullcontext()
    )
    hooks = [
        m.register_forward_pre_hook(_contiguous_input)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad(), oblivious:
            yield module
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)


def export_inference(
    model: Segmentor,
    path: str | os.PathLike,
    example: torch.Tensor,
    dynamic: bool = True,
    size_divisor: int = SIZE_DIVISOR,
) -> Path:
    """Export ``model.inference()`` with ``torch.export`` to a ``.pt2`` file.

    The program pads its input to a multiple of ``size_divisor`` and crops the logits back,
    as ``predict`` does (:class:`PaddedInference`): any H and W give predict's logits.

    Args:
        model: the trained segmentor (exported in eval mode; its mode is restored).
        path: output file (``.pt2``; an ``.onnx`` name is refused).
        example: (B, 3, H, W) example input.
        dynamic: allow any batch size and any H, W (``False`` fixes the example's shape).
        size_divisor: the padding multiple (predict's, 32).

    Returns:
        The path written. Load with ``torch.export.load(path).module()``.
    """
    export_format(path, "pt2")
    path = writable_path(path)
    example, shapes = _export_plan(example, dynamic)
    with _exporting(model, size_divisor) as module:
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
    try:
        torch.export.save(program, path)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def export_onnx(
    model: Segmentor,
    path: str | os.PathLike,
    example: torch.Tensor,
    dynamic: bool = True,
    opset: int = ONNX_OPSET,
    size_divisor: int = SIZE_DIVISOR,
) -> Path:
    """Export ``model.inference()`` to ONNX (``torch.onnx.export`` through ``torch.export``,
    the ``onnxscript`` translator), for onnxruntime, TensorRT, OpenVINO.

    The graph pads its input to a multiple of ``size_divisor`` and crops the logits back,
    as ``predict`` does (:class:`PaddedInference`): any H and W give predict's logits.

    Args:
        model: the trained segmentor (exported in eval mode; its mode is restored).
        path: output ``.onnx`` file; the weights are inside it (a ``.pt2`` name is refused).
        example: (B, 3, H, W) example input.
        dynamic: dynamic batch, height and width (any sizes); ``False`` fixes the example's
            shape.
        opset: the ONNX opset (default :data:`ONNX_OPSET`).
        size_divisor: the padding multiple (predict's, 32).

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
    export_format(path, "onnx")
    path = writable_path(path)
    example, shapes = _export_plan(example, dynamic)
    with _exporting(model, size_divisor) as module:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            dynamic_shapes=shapes,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )
    try:
        program.save(path, external_data=False)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str) -> nn.Module:
    """BatchNorm → SyncBatchNorm for distributed training on CUDA devices.

    SyncBatchNorm only runs on CUDA; on any other device the model is returned unchanged
    (gloo on CPU keeps per-process BatchNorm statistics).
    """
    if torch.device(device).type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
