"""Segmentation and feature metrics: confusion matrices, (boundary, frequency, object-size)
mIoU, A / U / U_k.

Confusion matrices are plain int64 tensors, so they add up over batches and reduce across
processes with ``torch.distributed.all_reduce``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from contextrast.functional import check_labels, distance_transform

__all__ = [
    "IoU",
    "boundary_band",
    "boundary_confusion_matrix",
    "boundary_distance",
    "check_object_sizes",
    "confusion_matrix",
    "connected_components",
    "feature_metrics",
    "frequency_groups",
    "frequency_miou",
    "mean_iou",
    "metrics_json",
    "object_size_buckets",
    "pixel_accuracy",
    "pixel_counts",
]


def metrics_json(metrics: Any, indent: int | None = None) -> str:
    """Strict JSON of a metrics dict: an undefined score (NaN, e.g. the IoU of a class in
    neither the ground truth nor the prediction) is written as ``null``, never as ``NaN``,
    which JSON does not have and most readers reject."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(metrics), indent=indent, allow_nan=False)


class IoU(NamedTuple):
    """iou: (N,) float64, NaN where a class is in neither GT nor prediction; miou: nanmean."""

    iou: torch.Tensor
    miou: float


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix, rows = ground truth, columns = prediction.

    Args:
        pred: (...) predicted class ids in [0, N).
        target: (...) same shape, ground truth with ``ignore_index`` (skipped).

    Returns:
        (N, N) int64 on the inputs' device.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    check_labels(target, num_classes, ignore_index, "target")
    if pred.is_floating_point() or bool(((pred < 0) | (pred >= num_classes)).any()):
        raise ValueError(f"pred must hold integer class ids in [0, {num_classes})")
    valid = target != ignore_index
    index = target[valid].long() * num_classes + pred[valid].long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> IoU:
    """Per-class IoU = TP / (TP + FP + FN) and its mean over the classes that occur.

    confusion: (N, N) rows = ground truth.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must have shape (N, N), got {tuple(confusion.shape)}")
    confusion = confusion.to(torch.float64)
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    occurring = ~torch.isnan(iou)
    miou = float(iou[occurring].mean()) if bool(occurring.any()) else float("nan")
    return IoU(iou, miou)


#: The thirds of :func:`frequency_groups`, most frequent first.
FREQUENCY_GROUPS = ("head", "middle", "tail")


def pixel_counts(pixels: Sequence[int]) -> list[int]:
    """``pixels`` as a list of ints >= 0 (Python, NumPy or tensor integers; not bools), or a
    one-line ValueError."""
    values = pixels.tolist() if hasattr(pixels, "tolist") else pixels
    try:  # a mapping would give its keys, a string its characters
        one_shot = isinstance(values, (Mapping, str, bytes, Iterator))  # keys, characters, once
        values = None if one_shot else list(values)
    except TypeError:
        values = None
    if values is None or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        shown = values[:8] if values is not None else pixels
        raise ValueError(f"pixels must be ints >= 0, one per class (training pixels), got {shown}")
    return [int(v) for v in values]


def frequency_groups(pixels: Sequence[int]) -> dict[str, list[int]]:
    """The classes in thirds by their training pixels (Contextrast++'s Table IV): ``head``
    the most frequent third, ``tail`` the rarest. Ties go to the lower class id first; with
    N not divisible by 3 the first thirds take one class more (10 classes: 4, 3, 3).

    pixels: (N,) pixels of each class in the training split.
    """
    pixels = pixel_counts(pixels)
    order = sorted(range(len(pixels)), key=lambda c: (-pixels[c], c))
    n = len(order)
    sizes = [n // 3 + (1 if k < n % 3 else 0) for k in range(3)]
    bounds = [0, sizes[0], sizes[0] + sizes[1], n]
    return {
        name: sorted(order[bounds[k] : bounds[k + 1]]) for k, name in enumerate(FREQUENCY_GROUPS)
    }


def frequency_miou(iou: Sequence[float], pixels: Sequence[int]) -> dict[str, float]:
    """Mean IoU of each third of :func:`frequency_groups` over its classes that occur (NaN
    IoU: absent from ground truth and prediction), NaN for a third with none.

    iou: (N,) per-class IoU; pixels: (N,) training pixels per class.
    """
    if len(iou) != len(pixels):
        raise ValueError(f"iou has {len(iou)} classes but pixels has {len(pixels)}")
    result = {}
    for name, members in frequency_groups(pixels).items():
        scores = [float(iou[c]) for c in members if not math.isnan(float(iou[c]))]
        result[name] = sum(scores) / len(scores) if scores else math.nan
    return result


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Share of labelled pixels predicted correctly. confusion: (N, N)."""
    total = confusion.sum()
    return float(confusion.diagonal().sum() / total) if int(total) > 0 else float("nan")


def boundary_band(target: torch.Tensor, width: float, ignore_index: int = 255) -> torch.Tensor:
    """Pixels within ``width`` (Euclidean, in pixels) of a pixel with a different value.

    The ignore value counts as a value, so the rim of an unlabelled region is in the band
    (its ignore pixels themselves are still skipped by :func:`confusion_matrix`).

    Args:
        target: (..., H, W) integer label maps.
        width: band half-width w > 0 (Table 4 uses 5, 7, 10).

    Returns:
        (..., H, W) bool.
    """
    if target.dim() < 2 or target.is_floating_point():
        raise ValueError(
            f"target must be an integer tensor of shape (..., H, W), got "
            f"{target.dtype} {tuple(target.shape)}"
        )
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return boundary_distance(target, width) <= width


def boundary_distance(target: torch.Tensor, max_distance: float | None = None) -> torch.Tensor:
    """Per pixel, the Euclidean distance to the nearest pixel with a different value.

    target: (..., H, W) integer. Returns (..., H, W) float; ``+inf`` where no other value is
    within ``max_distance`` (when given) or in the map at all. One call serves every band
    width up to ``max_distance``.
    """
    distance = torch.full(target.shape, float("inf"), device=target.device)
    # Per value v, the distance transform of (target == v) gives each pixel of v its
    # distance to the nearest pixel of another value.
    for value in torch.unique(target).tolist():
        inside = target == value
        distance = torch.where(inside, distance_transform(inside, max_distance), distance)
    return distance


#: The buckets of :func:`object_size_buckets`, smallest first (Contextrast++'s Table V).
OBJECT_SIZES = ("tiny", "small", "medium", "large")
#: The largest side length accepted (its square still counts pixels exactly).
MAX_OBJECT_SIDE = 2**16


def check_object_sizes(sizes: Sequence[int]) -> list[int]:
    """``sizes`` as a list of ints: three increasing side lengths in [1, 2¹⁶] px (Python,
    NumPy or tensor integers), or empty (the metric off); else a one-line ValueError."""
    values = sizes.tolist() if hasattr(sizes, "tolist") else sizes
    if isinstance(values, (list, tuple)) and (
        values == []
        or (
            len(values) == 3
            and all(
                isinstance(v, numbers.Integral)
                and not isinstance(v, bool)
                and 1 <= v <= MAX_OBJECT_SIDE
                for v in values
            )
            and values[0] < values[1] < values[2]
        )
    ):
        return [int(v) for v in values]
    raise ValueError(
        f"object_sizes must be three increasing side lengths in px, at most {MAX_OBJECT_SIDE} "
        f"(tiny / small / medium limits, e.g. [16, 32, 96]), or [] (off), got {sizes!r}"
    )


# (dy, dx) of the neighbours below or to the right: each undirected edge once.
_NEIGHBOURS = {4: ((0, 1), (1, 0)), 8: ((0, 1), (1, 0), (1, 1), (1, -1))}


def connected_components(
    target: torch.Tensor, ignore_index: int = 255, connectivity: int = 8
) -> torch.Tensor:
    """The connected regions of equal value in each map: ``ignore_index`` pixels belong to
    none, ``connectivity`` 8 (diagonal neighbours join, as one object) or 4.

    target: (..., H, W) integer. Returns (..., H, W) int64: each pixel the flat index
    (``y·W + x``) of its region's first pixel in raster order, −1 on ignore pixels, so two
    pixels of one map share a value exactly when they are connected.

    FastSV's hooking and shortcutting (Zhang, Azad, Hu 2020) on all maps at once: every
    pixel ends pointing at its region's smallest index in O(log P) rounds of O(P) tensor
    work, where a propagation of labels would take as many rounds as the longest region.
    """
    if target.dim() < 2 or target.is_floating_point():
        raise ValueError(
            f"target must be an integer tensor of shape (..., H, W), got "
            f"{target.dtype} {tuple(target.shape)}"
        )
    if (
        isinstance(connectivity, bool)
        or connectivity not in (4, 8)
        or not isinstance(connectivity, int)
    ):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    device = target.device
    if target.numel() == 0:
        return torch.full(target.shape, -1, dtype=torch.int64, device=device)
    h, w = target.shape[-2:]
    # int64 and contiguous: ignore_index compares without wrapping in a small dtype, and the
    # flat views below see raster order whatever the input's strides.
    maps = target.reshape(-1, h, w).to(torch.int64).contiguous()  # (B, H, W)
    valid = maps != ignore_index
    # The runs of one value along each row are connected already: they are the nodes, so
    # the work grows with the runs and their overlaps, not with every pixel's neighbours.
    starts = valid.clone()
    starts[:, :, 1:].bitwise_and_(
        (maps[:, :, 1:] != maps[:, :, :-1]).bitwise_or_(~valid[:, :, :-1])
    )
    run = starts.view(-1).cumsum(0).sub_(1).view(maps.shape)  # (B, H, W) run of each pixel
    first_pixel = starts.view(-1).nonzero().squeeze(1)  # (R,) flat index of each run's start
    if first_pixel.numel() == 0:
        return torch.full(target.shape, -1, dtype=torch.int64, device=device)
    sources, sinks = [], []
    for dy, dx in _NEIGHBOURS[connectivity][1:]:  # the rows below: the runs' overlaps
        # The pixels at (y, x) and at (y + dy, x + dx), both inside the map.
        left, right = max(0, -dx), w - max(0, dx)
        here = (slice(None), slice(0, h - dy), slice(left, right))
        there = (slice(None), slice(dy, h), slice(left + dx, right + dx))
        same = (maps[here] == maps[there]).bitwise_and_(valid[here])  # (B, H − dy, W')
        a, b = run[here], run[there]
        # One edge per pair of runs: drop a pixel whose left neighbour gave the same pair.
        same[:, :, 1:].bitwise_and_(
            (a[:, :, 1:] != a[:, :, :-1]).bitwise_or_(b[:, :, 1:] != b[:, :, :-1])
        )
        sources.append(a[same])
        sinks.append(b[same])
    u = torch.cat(sources + sinks)  # (E,) both directions of every edge
    v = torch.cat(sinks + sources)
    parent = torch.arange(first_pixel.numel(), device=device)
    grand = parent
    while u.numel():
        offer = grand.index_select(0, v)  # each edge's grandparent of its far end
        hooked = parent.clone()
        hooked.scatter_reduce_(0, parent.index_select(0, u), offer, "amin")  # hook the tree
        hooked.scatter_reduce_(0, u, offer, "amin")  # hook the run itself
        parent = torch.minimum(hooked, grand)  # shortcut
        updated = parent.index_select(0, parent)
        if torch.equal(updated, grand):
            break
        grand = updated
    while not torch.equal(grand, parent):  # the last pointers straight to the roots
        parent, grand = grand, grand.index_select(0, grand)
    # A region's smallest run is its first in raster order: its start is the region's id.
    image_start = torch.arange(maps.shape[0], device=device).view(-1, 1, 1) * (h * w)
    regions = first_pixel.index_select(0, parent).index_select(0, run.view(-1).clamp_(min=0))
    regions = regions.view(maps.shape) - image_start  # (B, H, W)
    return regions.masked_fill_(~valid, -1).view(target.shape)


def object_size_buckets(
    target: torch.Tensor,
    sizes: Sequence[int] = (16, 32, 96),
    ignore_index: int = 255,
    connectivity: int = 8,
) -> torch.Tensor:
    """Each labelled pixel's object-size bucket (:data:`OBJECT_SIZES`): an object is a
    connected region of one class (:func:`connected_components`), its size its pixel area A:
    0 tiny (A ≤ s₀²), 1 small (A ≤ s₁²), 2 medium (A ≤ s₂²), 3 large, for ``sizes`` (s₀,
    s₁, s₂) (Contextrast++'s Table V: 16, 32, 96 px).

    target: (..., H, W) integer. Returns (..., H, W) int64, −1 on ignore pixels.
    """
    sizes = check_object_sizes(sizes)
    if not sizes:
        raise ValueError("sizes must be three side lengths; [] turns the metric off elsewhere")
    regions = connected_components(target, ignore_index, connectivity)
    if target.numel() == 0:
        return regions
    h, w = target.shape[-2:]
    flat = regions.reshape(-1, h * w)  # (B, H·W)
    # Region ids made unique across maps: image b's ids move up by b·H·W.
    offset = torch.arange(flat.shape[0], device=target.device).unsqueeze(1) * (h * w)
    labelled = flat >= 0
    ids = torch.where(labelled, flat + offset, 0).contiguous()  # (B, H·W)
    area = torch.bincount(ids[labelled], minlength=flat.numel())  # (B·H·W,)
    limits = torch.tensor([s * s for s in sizes], device=target.device)
    buckets = torch.bucketize(area.index_select(0, ids.view(-1)), limits)  # (B·H·W,)
    return buckets.view(flat.shape).masked_fill_(~labelled, -1).view(target.shape)


def boundary_confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    width: float,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Confusion matrix over :func:`boundary_band` only (boundary mIoU at ``width`` px).

    pred, target: (..., H, W). Returns (N, N) int64.
    """
    band = boundary_band(target, width, ignore_index)
    banded = torch.where(band, target, torch.full_like(target, ignore_index))
    return confusion_matrix(pred, banded, num_classes, ignore_index)


def _mean_pairwise_distance(x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Mean of ‖x_j − x_k‖ over all n² ordered pairs (j = k included). x: (n, D)."""
    total = x.new_zeros(())
    for start in range(0, x.shape[0], chunk):
        total = total + torch.cdist(x[start : start + chunk], x).sum()
    return total / (x.shape[0] ** 2)


def feature_metrics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (3, 5),
    ignore_index: int = 255,
) -> dict[str, float]:
    """Alignment A, uniformity U and neighbourhood uniformity U_k (Li et al. CVPR22; Table 5).

    On L2-normalised features, with class centre c_i = normalised mean of class i's features:
    A = mean over classes of the mean ‖v_j − v_k‖ over all ordered pairs (j, k) of the class
    (n² pairs, j = k included); U = mean over ordered class pairs i ≠ j of ‖c_i − c_j‖;
    U_k = mean over classes i of the mean of the k smallest ‖c_i − c_j‖, j ≠ i (all C − 1
    when fewer). Classes are those present in ``labels``. Cost is O(n²) per class: sample.

    Args:
        embeddings: (M, D) features (normalised here).
        labels: (M,) class ids, ``ignore_index`` skipped.
        ks: the k of each U_k.

    Returns:
        {"A": ..., "U": ..., "U_3": ..., "U_5": ...} (NaN for U / U_k with fewer than 2
        classes).
    """
    if embeddings.dim() != 2 or labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"embeddings must be (M, D) and labels (M,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if any(not (isinstance(k, int) and k >= 1) for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks}")
    valid = labels != ignore_index
    x = F.normalize(embeddings[valid].to(torch.float64), dim=1)  # (M', D)
    y = labels[valid]
    classes = torch.unique(y).tolist()
    if not classes:
        raise ValueError("feature_metrics needs at least one labelled embedding")
    alignment, centres = [], []
    for c in classes:
        members = x[y == c]
        alignment.append(_mean_pairwise_distance(members))
        centres.append(F.normalize(members.mean(0), dim=0))
    result = {"A": float(torch.stack(alignment).mean())}
    nan = float("nan")
    centre = torch.stack(centres)  # (C, D)
    count = centre.shape[0]
    if count < 2:
        result["U"] = nan
        result.update({f"U_{k}": nan for k in ks})
        return result
    distance = torch.cdist(centre, centre)  # (C, C)
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=distance.device)
    result["U"] = float(distance[off_diagonal].mean())
    others = distance[off_diagonal].reshape(count, count - 1)  # (C, C-1)
    ordered = others.sort(dim=1).values
    for k in ks:
        result[f"U_{k}"] = float(ordered[:, : min(k, count - 1)].mean())
    return result
