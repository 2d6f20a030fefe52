"""BANE's error labels (eq. 6 as one label map) and the exact Euclidean distance transform
(eq. 7): separable and dense on one canvas of every layer (:func:`error_distance`), and
:func:`distance_transform` for any batch of masks (the boundary metrics use it).

Internal: the fast path of :func:`contextrast.functional.contextrast_loss`; each piece names
the reference it equals (:mod:`contextrast.functional.reference`) and is tested against it.
"""

from __future__ import annotations

import math

import torch

from contextrast.functional._cache import constant
from contextrast.functional._layouts import LayerLayout, layer_layout
from contextrast.functional.checks import check_integer, check_labels, check_rank

__all__ = [
    "DENSE_EDT_LIMIT",
    "distance_transform",
    "error_distance",
    "error_labels",
]


def error_labels(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    validate: bool = True,
) -> torch.Tensor:
    """Eq. 6's N error maps collapsed into one label map: each pixel lies in at most one
    (its ground-truth class's), so ``labels == n`` is ``reference.class_error_maps(...)[:,
    n]``.

    Args:
        pred: (B, H, W) predicted class ids in [0, N) (or any shape: e.g. the (M,) flat axis
            of a :class:`LayerLayout`).
        target: ground truth of the same shape, ``ignore_index`` allowed (never an error).
        validate: check the value ranges (two host synchronisations on a GPU).

    Returns:
        int64 of the same shape: the ground-truth class of each error pixel, N elsewhere.
    """
    for tensor, name in ((pred, "pred"), (target, "target")):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    check_integer(pred, "pred")
    if validate:
        check_labels(target, num_classes, ignore_index, "target")
        if bool(((pred < 0) | (pred >= num_classes)).any()):
            raise ValueError(f"pred contains values outside [0, {num_classes})")
    wrong = (target != pred).bitwise_and_(target != ignore_index)
    target = target if target.dtype == torch.long else target.long()
    return torch.where(wrong, target, constant(num_classes, torch.long, target.device))


def _other_label_squared_distance(values: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """Squared Euclidean distance from each pixel to the nearest pixel of its map with
    another label (+inf when the map has no other label); exact, a fixed number of
    operations and no host synchronisation.

    values: (M,) integer labels on ``layout``'s flat axis -> (M,) in the canvas's dtype.
    Separable (eq. 7) on the canvas (K, H, W): g, the distance along a row to the end of the
    pixel's run of equal labels (a layer's first and last columns are edges, not ends), then
    the min-plus ``D²(y) = min_y' [label(y') ≠ label(y) ? 0 : g²(y')] + (y − y')²`` over every
    row of a column at once: memory K·W·H², split into chunks of images above
    ``DENSE_EDT_LIMIT``.
    """
    canvas = layout.canvas
    k, h, w = canvas.shape
    device, dtype = values.device, canvas.dtype
    if canvas.source is None:
        labels = values.view(k, h, w)
    else:
        labels = values.index_select(0, canvas.source).view(k, h, w)
    # Runs start (end) where the label changes or at a layer's first (last) column; the row
    # pass works on the (K·h, w) rows.
    rows = labels.view(k * h, w)
    starts = (rows != rows.index_select(1, canvas.previous)).bitwise_or_(canvas.first)
    ends = (rows != rows.index_select(1, canvas.following)).bitwise_or_(canvas.last)
    # Codes 2·x + [x is an edge] grow with x: a running max (min from the right) of the codes
    # where runs start (end) gives each pixel its run's start (end) and whether it is an edge.
    start = torch.where(starts, canvas.start_code, constant(-1.0, dtype, device))
    start = start.cummax(1).values
    end = torch.where(ends, canvas.end_code, constant(2.0 * w, dtype, device)).flip(1)
    end = end.cummin(1).values.flip(1)
    one, two = constant(1.0, dtype, device), constant(2.0, dtype, device)
    inf = constant(float("inf"), dtype, device)
    left = canvas.after - start.div(two, rounding_mode="floor")
    left = torch.where(start.remainder(two) == one, inf, left)
    right = end.div(two, rounding_mode="floor") - canvas.before
    right = torch.where(end.remainder(two) == one, inf, right)
    row = torch.minimum(left, right)
    row_squared = row * row
    if canvas.small is not None:  # exact in int16: half the memory of the min-plus below
        row_squared = row_squared.clamp_max_(canvas.small).to(torch.int16)
    row_squared = row_squared.view(k, h, w).transpose(1, 2)  # (K, w, h')
    column_labels = labels.transpose(1, 2)  # (K, w, h')
    zero = constant(0, row_squared.dtype, device)
    per_chunk = max(1, DENSE_EDT_LIMIT // (h * h * w))
    chunks = [(row_squared, column_labels)]
    if per_chunk < k:
        chunks = list(zip(row_squared.split(per_chunk), column_labels.split(per_chunk)))
    parts = []
    for g2, own in chunks:
        other = own.unsqueeze(3) != own.unsqueeze(2)  # (k, w, h, h'): another label at y'
        candidate = torch.where(other, zero, g2.unsqueeze(2))  # (k, w, h, h')
        parts.append(candidate.add_(canvas.offsets).amin(3))  # (k, w, h); in place: memory
    squared = parts[0] if len(parts) == 1 else torch.cat(parts)
    squared = squared.view(-1).index_select(0, canvas.result_index)  # (M,)
    if canvas.small is None:
        return squared
    # Back to floats; the cap (no other label in reach: a map without one) is +inf.
    beyond = squared >= constant(canvas.small, torch.int16, device)
    return squared.to(dtype).masked_fill_(beyond, float("inf"))


def error_distance(
    labels: torch.Tensor, num_classes: int, layout: LayerLayout | None = None
) -> torch.Tensor:
    """Eq. 7 for every class at once: for each error pixel (``labels`` < N, from
    :func:`error_labels`), the Euclidean distance to the nearest pixel outside its class's
    error map; 0 elsewhere; +inf for an error map that fills its image. Equals
    ``reference.distance_map`` of each pixel's own class's map.

    Equal to ``distance_transform(class_error_maps(...))`` taken at each pixel's own class,
    with one map per image instead of N.

    Args:
        labels: (B, H, W) int64; or, with ``layout``, the (M,) flat axis of I layers' maps,
            which are transformed together on the layout's canvas (each within its own map).

    Returns:
        float32 of ``labels``' shape (float64 when squared distances could exceed 2²⁴).
    """
    if layout is None:
        check_rank(labels, 3, "labels", "(B, H, W)")
        if labels.numel() == 0:
            h, w = labels.shape[-2:]
            dtype = torch.float32 if h * h + w * w < 2**24 else torch.float64
            return torch.zeros(labels.shape, dtype=dtype, device=labels.device)
        layout = layer_layout(labels.shape[0], (tuple(labels.shape[-2:]),), labels.device)
    else:
        check_rank(labels, 1, "labels", "(M,)")
    flat = labels if labels.dim() == 1 else labels.reshape(-1)
    squared = _other_label_squared_distance(flat, layout)
    errors = flat < constant(num_classes, flat.dtype, flat.device)
    distance = torch.where(errors, squared.sqrt(), constant(0.0, squared.dtype, flat.device))
    return distance if labels.dim() == 1 else distance.view(labels.shape)


def _row_runs_distance(true_index: torch.Tensor, width: int) -> torch.Tensor:
    """Distance along its row from each True pixel to the nearest False pixel (inf: none).

    true_index: (E,) sorted flat indices of the True pixels of maps laid out (K, H, W).
    Consecutive indices on one row form a run of True pixels; a pixel's distance is to the
    False pixel just outside its run, unless the run touches the row's end.
    """
    column = true_index % width
    previous = torch.cat([true_index.new_full((1,), -2), true_index[:-1]])
    following = torch.cat([true_index[1:], true_index.new_full((1,), -2)])
    run_start = (column == 0) | (previous != true_index - 1)  # (E,)
    run_end = (column == width - 1) | (following != true_index + 1)  # (E,)
    # The indices increase, so a running max of the run starts seen so far gives each pixel
    # its run's start, and a running min from the right its end (no boolean indexing: no
    # host synchronisation on a GPU).
    start = torch.where(run_start, true_index, -1).cummax(0).values  # (E,)
    big = torch.iinfo(true_index.dtype).max
    end = torch.where(run_end, true_index, big).flip(0).cummin(0).values.flip(0)  # (E,)
    inf = torch.tensor(float("inf"), device=true_index.device)
    left = torch.where(start % width == 0, inf, (true_index - start + 1).float())
    right = torch.where(end % width == width - 1, inf, (end - true_index + 1).float())
    return torch.minimum(left, right)


def _column_envelope(
    buffer: torch.Tensor,
    true_index: torch.Tensor,
    height: int,
    width: int,
    max_offset: int | None = None,
) -> torch.Tensor:
    """Exact squared distance of each True pixel: ``min_d d² + g²[pixel + d·W]``.

    buffer: flat (K·H·W + 1,) squared row distances g² (0 on False pixels) followed by one
    +inf sentinel that stands in for rows outside the map. Offsets d = ±1, ±2, … are tried
    in order; a pixel leaves the work set once (d + 1)² cannot beat its current value, so
    thin error regions need a handful of passes over few pixels.
    """
    sentinel = buffer.numel() - 1
    best = buffer[true_index]  # (E,)
    result = best.clone()
    slot = torch.arange(true_index.numel(), device=true_index.device)
    index, row = true_index, (true_index // width) % height
    offset = 1
    last_offset = height - 1 if max_offset is None else min(height - 1, max_offset)
    while offset <= last_offset:
        above = torch.where(row >= offset, index - offset * width, sentinel)
        below = torch.where(row < height - offset, index + offset * width, sentinel)
        best = torch.minimum(best, torch.minimum(buffer[above], buffer[below]) + offset * offset)
        offset += 1
        still = best > offset * offset
        keep = torch.nonzero(still).squeeze(1)
        if keep.numel() == 0:
            break
        # Finished pixels may stay in the work set (later offsets cannot lower them), so it
        # is compacted only when it shrank enough to pay for the copies.
        if keep.numel() < 0.75 * index.numel():
            result.index_copy_(0, slot, best)
            slot, index, row, best = slot[keep], index[keep], row[keep], best[keep]
    result.index_copy_(0, slot, best)
    return result


#: Largest W·H·min(H, W) of one map that the dense transform handles at once (its min-plus
#: step holds that many values); larger maps (full-resolution boundary bands) take the sparse
#: one, which works on the True pixels only.
DENSE_EDT_LIMIT = 2**24


def distance_transform(mask: torch.Tensor, max_distance: float | None = None) -> torch.Tensor:
    """Exact Euclidean distance transform, batched over all leading dimensions (equals
    ``reference.distance_map``).

    For every True pixel, the Euclidean distance to the nearest False pixel of the same 2-D
    map; 0 on False pixels; ``+inf`` everywhere in a map that has no False pixel. Same values
    as ``scipy.ndimage.distance_transform_edt`` on maps that have a False pixel.

    Separable (eq. 7): each pixel's distance g along one axis, then the exact min-plus pass
    ``D² = min_d d² + g²(± d)`` along the other. Maps up to ``DENSE_EDT_LIMIT`` take the
    dense form (:func:`error_distance`'s: a fixed number of operations, no host
    synchronisation); larger ones the sparse form, which works on the True pixels only and
    stops per pixel as soon as no larger offset can win. Both are exact. Everything runs on
    ``mask.device``.

    Args:
        mask: (..., H, W) bool.
        max_distance: if given, distances above it are reported as ``+inf`` (exact at or
            below it) and the column pass stops at that offset: what boundary bands need.

    Returns:
        (..., H, W) float32 (float64 when H² + W² ≥ 2²⁴, to keep squared distances exact).
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape (..., H, W), got "
            f"{getattr(mask, 'dtype', type(mask))}"
        )
    if mask.dim() < 2:
        raise ValueError(f"mask must have shape (..., H, W), got {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    numel = mask.numel()
    dtype = torch.float32 if h * h + w * w < 2**24 else torch.float64
    # One flat buffer: squared row distances during the work, the result at the end, and a
    # trailing +inf sentinel for out-of-map reads.
    buffer = torch.zeros(numel + 1, dtype=dtype, device=mask.device)
    buffer[numel] = float("inf")
    out = buffer[:numel].view(mask.shape)
    if numel == 0:
        return out
    if w * h * min(h, w) <= DENSE_EDT_LIMIT:
        # Built, not cached: evaluation's boundary bands come in every image size and would
        # evict the few layouts a training step reuses.
        layout = layer_layout.uncached(numel // (h * w), ((h, w),), mask.device)
        squared = _other_label_squared_distance(mask.reshape(-1).long(), layout)
        distance = torch.where(mask.reshape(-1), squared.sqrt().to(dtype), 0.0)
        if max_distance is not None:
            distance = distance.masked_fill(distance > max_distance, float("inf"))
        return distance.view(mask.shape)
    true_index = torch.nonzero(mask.reshape(-1)).squeeze(1)  # (E,) sorted
    if true_index.numel() == 0:
        return out
    map_id = torch.div(true_index, h * w, rounding_mode="floor")  # (E,)
    true_count = torch.bincount(map_id, minlength=numel // (h * w))  # (K,)
    full = true_count == h * w  # (K,) maps without a False pixel
    if bool(full.any()):
        finite = ~full[map_id]
        buffer[true_index[~finite]] = float("inf")
        true_index = true_index[finite]
    if true_index.numel() > 0:
        buffer[true_index] = _row_runs_distance(true_index, w).to(dtype).square()
        max_offset = None if max_distance is None else math.floor(max_distance)
        squared = _column_envelope(buffer, true_index, h, w, max_offset)
        distance = squared.sqrt()
        if max_distance is not None:
            distance = distance.masked_fill(distance > max_distance, float("inf"))
        buffer[true_index] = distance
    return out
