"""Input checks shared by the reference and the fast functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from contextrast.functional._cache import constant

__all__ = [
    "NonFiniteError",
    "check_fraction",
    "check_integer",
    "check_labels",
    "check_layer_order",
    "check_loss_inputs",
    "check_map_size",
    "check_rank",
    "compute_dtype",
    "is_finite",
    "raise_if_nonfinite",
]


class NonFiniteError(ValueError):
    """An input of a loss holds NaN or inf."""


def is_finite(scalar: torch.Tensor) -> bool:
    """Whether a scalar tensor is finite (one host synchronisation)."""
    difference = scalar - scalar  # NaN for NaN and for ±inf
    return bool(difference == constant(0.0, difference.dtype, difference.device))


def raise_if_nonfinite(tensors: Sequence[torch.Tensor], name: str = "features") -> None:
    """Raise :class:`NonFiniteError` naming the ``name[i]`` that hold NaN or inf (one
    synchronisation per tensor)."""
    bad = [i for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"{name}{bad} hold NaN or inf values")


def check_rank(tensor: torch.Tensor, rank: int, name: str, shape: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(tensor)}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {shape} ({rank} dims), got {tuple(tensor.shape)}")


def check_integer(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class indices, got {tensor.dtype}")


def check_labels(
    labels: torch.Tensor, num_classes: int, ignore_index: int, name: str = "labels"
) -> None:
    """Raise ``ValueError`` unless every value is in ``[0, num_classes)`` or ``ignore_index``.

    Costs one host synchronisation; it turns a silent wrong anchor into a clear error.
    """
    check_integer(labels, name)
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} collides with a class id; expected a value outside "
            f"[0, {num_classes})"
        )
    if labels.numel() == 0:
        return
    # One pass: a value outside [0, N) that is not the ignore index (max of bool: any).
    bad = (labels < 0).bitwise_or_(labels >= num_classes).bitwise_and_(labels != ignore_index)
    if bool(bad.max()):
        values = torch.unique(labels[bad])[:5].tolist()
        raise ValueError(
            f"{name} contains values {values} outside [0, {num_classes}) and not the "
            f"ignore_index {ignore_index}"
        )


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions are computed in it)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in [0, 1] (BANE's K, ``w_high``), or a one-line ``ValueError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or not 0.0 <= value <= 1.0
    ):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_map_size(name: str, shape: Sequence[int], target_shape: Sequence[int]) -> None:
    """Raise unless the (h, w) map ``shape`` and the (H, W) labels are one picture at one
    scale in both axes, up to one pixel of rounding per axis (odd sizes through strided
    layers round up or down): some s > 0 with |H/s − h| ≤ 1 and |W/s − w| ≤ 1, that is
    |h·W − w·H| ≤ H + W. Any scale passes (the labels are resized, nearest, to each map)."""
    (h, w), (height, width) = shape, target_shape
    if min(h, w) < 1 or abs(h * width - w * height) <= height + width:
        return  # (an empty map is refused with the layer layout)
    raise ValueError(
        f"target (labels) of size {height}x{width} does not match {name} of size {h}x{w}: "
        f"{height / h:.3g}x its height but {width / w:.3g}x its width; the labels and every "
        "map must share one aspect ratio (labels at the input's resolution, maps at the "
        "model's strides)"
    )


def check_layer_order(name: str, sizes: Sequence[Sequence[int]]) -> None:
    """Raise unless the layers' (h, w) never grow from one layer to the next: the loss's
    layer weights and fusion (the last layer's anchors) assume the lowest layer, the
    largest map, first. Equal sizes pass (dilated backbones keep stride 8 in two stages)."""
    for i in range(1, len(sizes)):
        (h0, w0), (h1, w1) = sizes[i - 1], sizes[i]
        if h1 > h0 or w1 > w0:
            raise ValueError(
                f"{name}[{i}] ({h1}x{w1}) is larger than {name}[{i - 1}] ({h0}x{w0}): give the "
                "layers lowest first, the largest map first (reverse the list, and "
                "in_channels with it)"
            )


def check_loss_inputs(
    shapes: Sequence[Sequence[int]], logits: torch.Tensor, target: torch.Tensor
) -> None:
    """One-line errors for the whole loss's inputs (the reference's and the fast entry's):
    ``shapes``, each layer's embedding shape, must be (B, d, h, w) with the labels' batch,
    one d, the layers lowest first, and every map and the logits of the labels' aspect."""
    check_rank(target, 3, "target", "(B, H, W)")
    check_rank(logits, 4, "logits", "(B, N, h, w)")
    batch = target.shape[0]
    if logits.shape[0] != batch:
        raise ValueError(f"logits have batch {logits.shape[0]} but target (labels) has {batch}")
    for i, shape in enumerate(shapes):
        if len(shape) != 4:
            raise ValueError(f"embeddings[{i}] must be a (B, d, h, w) map, got {tuple(shape)}")
        if shape[0] != batch:
            raise ValueError(
                f"embeddings[{i}] has batch {shape[0]} but target (labels) has {batch}"
            )
    dims = sorted({shape[1] for shape in shapes})
    if len(dims) > 1:
        raise ValueError(f"the embeddings must share one size d, got {dims} across layers")
    check_layer_order("embeddings", [tuple(shape[2:]) for shape in shapes])
    for i, shape in enumerate(shapes):
        check_map_size(f"embeddings[{i}]", shape[2:], target.shape[-2:])
    check_map_size("logits", logits.shape[-2:], target.shape[-2:])
