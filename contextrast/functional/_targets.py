"""Every layer's ground truth and prediction on one flat axis: what a sampler reads and
what :func:`~contextrast.functional.contextrast_loss` scores (:func:`layer_targets`)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from contextrast.functional import batched as B
from contextrast.functional.checks import check_labels

__all__ = ["LayerTargets", "layer_targets"]


class LayerTargets(NamedTuple):
    """Every layer's ground truth and prediction on one flat axis (what a sampler reads).

    layout: the :class:`~.batched.LayerLayout` of the layers' sizes; labels: (M,) class ids
    (``ignore_index`` where unlabelled), each layer's target resized (nearest); pred: (M,)
    the logits' argmax, resized likewise.
    """

    layout: B.LayerLayout
    labels: torch.Tensor
    pred: torch.Tensor


def layer_targets(
    logits: torch.Tensor,
    target: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    ignore_index: int = 255,
    validate: bool = True,
) -> LayerTargets:
    """Lay out the labels and the prediction of every layer on one flat axis.

    Args:
        logits: (B, N, h, w) segmentation output; only its argmax is used.
        target: (B, H, W) class ids with ``ignore_index``.
        sizes: the layers' (h_i, w_i), lowest layer first.
        validate: check the label values (one host synchronisation).
    """
    if validate:
        check_labels(target, logits.shape[1], ignore_index, "target")
    sizes = _sizes(sizes)
    layout = B.layer_layout(target.shape[0], sizes, target.device)
    with torch.no_grad(), torch.autocast(device_type=target.device.type, enabled=False):
        pred = logits.argmax(dim=1)  # (B, h, w)
        return LayerTargets(layout, B.gather_layers(target, layout), B.gather_layers(pred, layout))


def _sizes(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``sizes`` as a tuple of (h, w) pairs of positive ints, or a one-line ValueError."""
    try:
        pairs = tuple(tuple(size) for size in sizes)
    except TypeError:
        pairs = None
    if not pairs or not all(
        len(p) == 2 and all(isinstance(x, numbers.Integral) and x >= 1 for x in p) for p in pairs
    ):
        raise ValueError(f"sizes must be (h, w) pairs of positive ints, one per layer, got {sizes}")
    return tuple((int(h), int(w)) for h, w in pairs)
