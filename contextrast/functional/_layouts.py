"""I layers as one flat axis: the loss works on every layer's pixels at once
(:class:`LayerLayout`, with its :class:`Canvas` for the distance transform), segment sums
over the layers, and the labels gathered onto the axis.

Internal: the fast path of :func:`contextrast.functional.contextrast_loss`; each piece names
the reference it equals (:mod:`contextrast.functional.reference`) and is tested against it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from contextrast.functional._cache import tensor_cache
from contextrast.functional.checks import check_rank

__all__ = [
    "Canvas",
    "LayerLayout",
    "Segments",
    "class_one_hot",
    "class_rows",
    "gather_layers",
    "layer_layout",
    "resize_labels",
    "segment_sum",
    "segments",
]


class Segments(NamedTuple):
    """Consecutive blocks of a flat axis of length C = ``sum(counts)``: block s holds the
    positions ``[sum(counts[:s]), sum(counts[:s + 1]))`` (in the loss: one block per layer).

    counts: the block sizes; ids: (C,) int64 block of each position; keys: (C,) float32, the
    same as floats; members: (C, S) float32 one-hot of ``ids`` (a sum per block is one matmul,
    deterministic on every device); local: (C,) int64 position of each entry within its
    block; first: (C,) int64 the first position of each entry's block.
    """

    counts: tuple[int, ...]
    ids: torch.Tensor
    keys: torch.Tensor
    members: torch.Tensor
    local: torch.Tensor
    first: torch.Tensor


@tensor_cache(maxsize=64)
def segments(counts: tuple[int, ...], device: torch.device) -> Segments:
    """The :class:`Segments` of blocks of ``counts`` entries; cached per sizes and device,
    so a training step builds nothing."""
    if not counts or any(not isinstance(c, int) or c < 0 for c in counts):
        raise ValueError(f"counts must be non-negative ints, got {counts!r}")
    sizes = torch.tensor(counts)
    ids = torch.repeat_interleave(torch.arange(len(counts)), sizes)  # (C,)
    starts = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(ids.numel()) - starts[ids]
    members = (ids.unsqueeze(1) == torch.arange(len(counts))).float()  # (C, S)
    return Segments(
        tuple(counts),
        ids.to(device),
        ids.float().to(device),
        members.to(device),
        local.to(device),
        starts[ids].to(device),
    )


@tensor_cache(maxsize=64)
def prefix_index(counts: tuple[int, ...], kept: tuple[int, ...], device) -> torch.Tensor:
    """(Σ kept,) int64 the first ``kept[i]`` positions of each block of ``counts``."""
    starts = torch.tensor([sum(counts[:i]) for i in range(len(counts))])
    ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(kept))
    local = torch.arange(sum(kept)) - torch.tensor([sum(kept[:i]) for i in range(len(kept))])[ids]
    return (starts[ids] + local).to(device)


def segment_sum(values: torch.Tensor, blocks: Segments | None) -> torch.Tensor:
    """values: (A, C) -> (A, S) sums over each block of the last axis; ``None``: one block."""
    if blocks is None:
        return values.sum(1, keepdim=True)
    if not values.is_floating_point():
        values = values.to(blocks.members.dtype)
    members = blocks.members
    return torch.mm(values, members if members.dtype == values.dtype else members.to(values.dtype))


def _segment_expand(values: torch.Tensor, blocks: Segments | None) -> torch.Tensor:
    """values: (A, S) -> (A, C), each block's value at each of its positions (``None``: the
    (A, 1) column, broadcast)."""
    return values if blocks is None else values.index_select(1, blocks.ids)


class Canvas(NamedTuple):
    """The static part of the distance transform of a :class:`LayerLayout`'s canvas
    (B, H_c, W_c), all cached with the layout.

    source: (B·H_c·W_c,) flat-axis index of each canvas pixel, or None when the canvas is the
    flat axis itself (one upright map); result_index: (M,) position of each pixel in the
    transform's (B, W_c, H_c) output; previous, following: (W_c,) the column left and right
    of each (itself at a layer's first and last column); first, last: (W_c,) bool, a layer's
    first and last column; start_code, end_code: (W_c,) ``2x + first``, ``2x + last``;
    before, after: (W_c,) x − 1 and x + 1; offsets: (H_c, H_c) ``(y − y')²``; dtype:
    float32, or float64 when squared distances could exceed float32's exact integers;
    small: when every finite squared distance of the layers is below it, the min-plus runs in
    int16 with this value standing for "beyond" (half the memory of float32), else None.
    """

    shape: tuple[int, int, int]
    source: torch.Tensor | None
    result_index: torch.Tensor
    previous: torch.Tensor
    following: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    start_code: torch.Tensor
    end_code: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    offsets: torch.Tensor
    dtype: torch.dtype
    small: int | None


class LayerLayout(NamedTuple):
    """I maps (B, h_i, w_i) of one batch as one flat axis of M = Σ B·h_i·w_i pixels, layer
    after layer, each in (b, y, x) order, and as one canvas for the distance transform.

    The canvas (B, H_c, W_c) puts the layers side by side (each transposed when that makes the
    canvas cheaper), every column inside one layer; rows below a shorter layer repeat its last
    row, which changes no distance of the layer (a repeated pixel is never nearer than the one
    it repeats), and the row pass of the transform treats the layer's first and last columns
    as the map's edges.

    batch, sizes: B and the (h_i, w_i); segments: the layers as :class:`Segments` of the flat
    axis; canvas: the :class:`Canvas`.
    """

    batch: int
    sizes: tuple[tuple[int, int], ...]
    segments: Segments
    canvas: Canvas


@tensor_cache(maxsize=16)
def layer_layout(
    batch: int, sizes: tuple[tuple[int, int], ...], device: torch.device
) -> LayerLayout:
    """The :class:`LayerLayout` of ``batch`` images with layer maps of ``sizes``; cached."""
    if batch < 1 or not sizes or any(h < 1 or w < 1 for h, w in sizes):
        raise ValueError(f"need batch >= 1 and non-empty map sizes, got {batch}, {sizes}")
    # The column pass costs W_c·H_c²: take the orientation that makes it smaller.
    upright = sum(w for _, w in sizes) * max(h for h, _ in sizes) ** 2
    turned = sum(h for h, _ in sizes) * max(w for _, w in sizes) ** 2 < upright
    maps = [(w, h) if turned else (h, w) for h, w in sizes]  # canvas (rows, cols) per layer
    rows = max(r for r, _ in maps)
    width = sum(c for _, c in maps)
    source = torch.empty(batch, rows, width, dtype=torch.long)
    result_index, first, last = (
        [],
        torch.zeros(width, dtype=torch.bool),
        torch.zeros(width, dtype=torch.bool),
    )
    start = column = 0
    image = torch.arange(batch).view(batch, 1, 1)
    for (h, w), (r, c) in zip(sizes, maps):
        row = torch.arange(rows).clamp(max=r - 1).view(1, rows, 1)  # last row repeated
        col = torch.arange(c).view(1, 1, c)
        # (y, x) of the layer's map at canvas (row, col): transposed or not.
        y, x = (col, row) if turned else (row, col)
        source[:, :, column : column + c] = start + image * h * w + y * w + x
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        canvas_row, canvas_col = (xs, ys) if turned else (ys, xs)
        # The transform's output is laid out (B, W_c, H_c).
        flat = image * width * rows + (column + canvas_col) * rows + canvas_row
        result_index.append(flat.flatten())
        first[column], last[column + c - 1] = True, True
        start += batch * h * w
        column += c
    dtype = torch.float32 if rows * rows + width * width < 2**24 else torch.float64
    position = torch.arange(width)
    lines = torch.arange(rows, dtype=dtype)
    # int16 holds a candidate g² + (y − y')² exactly when g² is capped at ``small`` and every
    # finite squared distance within a layer (at most c² + r² on its canvas block) is below.
    small = 2**15 - 1 - (rows - 1) ** 2
    exact = all(c * c + r * r < small for r, c in maps)
    offsets = (lines.unsqueeze(1) - lines).square()
    offsets = offsets.to(torch.int16) if exact else offsets
    identity = len(sizes) == 1 and not turned
    canvas = Canvas(
        shape=(batch, rows, width),
        source=None if identity else source.flatten().to(device),
        result_index=torch.cat(result_index).to(device),
        previous=torch.where(first, position, position - 1).to(device),
        following=torch.where(last, position, position + 1).to(device),
        first=first.to(device),
        last=last.to(device),
        start_code=(2 * position + first).to(dtype).to(device),
        end_code=(2 * position + last).to(dtype).to(device),
        before=(position - 1).to(dtype).to(device),
        after=(position + 1).to(dtype).to(device),
        offsets=offsets.to(device),
        dtype=dtype,
        small=small if exact else None,
    )
    return LayerLayout(
        batch=batch,
        sizes=tuple(sizes),
        segments=segments(tuple(batch * h * w for h, w in sizes), device),
        canvas=canvas,
    )


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map, by indexing (no float round trip).

    labels: (B, H, W) integer. Returns (B, h, w); the sample for output pixel (y, x) is input
    pixel (⌊y·H/h⌋, ⌊x·W/w⌋), the rule of ``F.interpolate(mode="nearest")``.
    """
    _, h_in, w_in = labels.shape
    h, w = size
    if (h, w) == (h_in, w_in):
        return labels
    if h_in % h == 0 and w_in % w == 0:  # the usual strides: every (H/h)-th row, one copy
        return labels[:, :: h_in // h, :: w_in // w].contiguous()
    rows = torch.div(torch.arange(h, device=labels.device) * h_in, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w, device=labels.device) * w_in, w, rounding_mode="floor")
    return labels.index_select(1, rows).index_select(2, cols)


@tensor_cache(maxsize=64)
def _gather_index(
    batch: int, source: tuple[int, int], sizes: tuple[tuple[int, int], ...], device: torch.device
) -> torch.Tensor:
    """(M,) flat index into (B, H, W) of each layer pixel's nearest-neighbour sample."""
    # Each pixel's own flat index, resized by the one nearest-neighbour rule.
    index = torch.arange(batch * source[0] * source[1]).view(batch, *source)
    return torch.cat([resize_labels(index, size).flatten() for size in sizes]).to(device)


def gather_layers(maps: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """Nearest-neighbour resize of (B, H, W) maps to every layer's size, on the flat axis
    (equals ``F.interpolate(mode="nearest")`` per layer, as ``reference.contextrast_loss``
    resizes).

    maps: (B, H, W) (labels or predicted classes). Returns (M,): layer i's part equals
    ``resize_labels(maps, sizes[i]).flatten()`` (``F.interpolate(mode="nearest")``'s rule).
    """
    check_rank(maps, 3, "maps", "(B, H, W)")
    if maps.shape[0] != layout.batch:
        raise ValueError(f"maps have batch {maps.shape[0]}, the layout {layout.batch}")
    index = _gather_index(layout.batch, tuple(maps.shape[1:]), layout.sizes, maps.device)
    flat = maps.view(-1) if maps.is_contiguous() else maps.reshape(-1)
    return flat.index_select(0, index)


@tensor_cache(maxsize=64)
def class_rows(num_classes: int, device: torch.device) -> torch.Tensor:
    """(N, 1) int64 class ids, cached: ``labels == class_rows(N, device)`` is the (N, M)
    class membership of (M,) labels."""
    return torch.arange(num_classes, device=device).view(num_classes, 1)


def class_one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot of class labels along a new second-to-last dim; ignore (any value outside the
    classes) is 0.

    labels: (B, P) or (M,) integer. Returns (B, N, P) or (N, M) of ``dtype``.
    """
    return (labels.unsqueeze(-2) == class_rows(num_classes, labels.device)).to(dtype)
