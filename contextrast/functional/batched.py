"""The fast path: Contextrast's equations batched over every layer, with written-out gradients.

What :class:`~contextrast.ContextrastLoss` runs. Each piece computes what a function of
:mod:`contextrast.functional.reference` computes (its docstring names which) and is tested
against it: every layer's pixels on one flat axis (:class:`LayerLayout`), BANE's distance
transform of all layers on one canvas (:class:`Canvas`), three autograd Functions whose
gradients are closed forms (double backward is refused: their backward is not itself
differentiable), cached index tensors and 0-dim constants (:func:`tensor_cache`: a caller
that edits one in place gets it rebuilt), and no host synchronisation.

Every function is vectorised (no Python loop over pixels) and keeps its tensors on the device
of its inputs; the random ones draw from the global RNG of that device. Reduced-precision
inputs (bfloat16, float16) are computed in float32 with autocast disabled: log-sum-exp over
thousands of pixels at a temperature of 0.01 overflows half-precision ranges.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from contextrast.functional.checks import check_fraction, check_integer, check_labels, check_rank

__all__ = [
    "DENSE_EDT_LIMIT",
    "Canvas",
    "LayerGroup",
    "LayerLayout",
    "Segments",
    "bane_select_labels",
    "bound_pixels",
    "class_one_hot",
    "class_rows",
    "constant",
    "distance_transform",
    "error_distance",
    "error_labels",
    "fuse_anchors",
    "gather_layers",
    "group_one_hot",
    "hard_negative_mask",
    "info_nce_across_processes",
    "info_nce_from_logits",
    "layer_layout",
    "layer_similarity",
    "layer_sums",
    "resize_labels",
    "sample_pairs",
    "sample_per_row",
    "segment_sum",
    "segments",
    "tensor_cache",
]


# --------------------------------------------------------------------------------------------
# cached tensors that no caller can corrupt
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in ``value`` (a tensor, or nested tuples / NamedTuples holding some)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def tensor_cache(maxsize: int) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """``functools.lru_cache`` for functions that return tensors, safe against callers.

    A cached tensor is shared by every later call, so an in-place edit by one caller would
    corrupt them all. Each entry keeps its tensors' version counters (bumped by every in-place
    operation); a hit whose tensors changed is rebuilt. The check reads Python attributes
    only: no tensor operation, no host synchronisation. Entries are built outside inference
    mode, so a cache first filled during evaluation still serves training. (Edits that
    bypass autograd's version counter, through ``.data`` or a NumPy view, are not seen.)
    """

    def decorate(build: Callable[..., _T]) -> Callable[..., _T]:
        entries: OrderedDict = OrderedDict()

        @functools.wraps(build)
        def cached(*args):
            entry = entries.get(args)
            if entry is not None:
                value, versions = entry
                if [t._version for t in _tensors(value)] == versions:
                    entries.move_to_end(args)
                    return value
            with torch.inference_mode(False):
                value = build(*args)
            entries[args] = (value, [t._version for t in _tensors(value)])
            entries.move_to_end(args)
            if len(entries) > maxsize:
                entries.popitem(last=False)
            return value

        cached.cache_clear = entries.clear
        cached.cache_size = lambda: len(entries)
        cached.uncached = build
        return cached

    return decorate


# --------------------------------------------------------------------------------------------
# I layers as one flat axis: the loss works on every layer's pixels at once
# --------------------------------------------------------------------------------------------


@tensor_cache(maxsize=256)
def constant(value: float | int | tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached tensor of ``value`` (a number: 0-dim): an operand that, unlike a Python
    number, costs no conversion per operation (the loss is counted in operator calls)."""
    return torch.tensor(value, dtype=dtype, device=device)


@tensor_cache(maxsize=64)
def _arange(size: int, device: torch.device) -> torch.Tensor:
    """A cached ``torch.arange(size)`` (int64)."""
    return torch.arange(size, device=device)


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


# --------------------------------------------------------------------------------------------
# CCL: representative anchors (eq. 1) and the pixel-anchor loss (eq. 3–4)
# --------------------------------------------------------------------------------------------


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


@tensor_cache(maxsize=16)
def _lower_layers(layers: int, device: torch.device) -> torch.Tensor:
    """(I, 1, 1) bool, True for every layer but the last."""
    return (torch.arange(layers) < layers - 1).view(-1, 1, 1).to(device)


def fuse_anchors(
    anchors: Sequence[torch.Tensor] | torch.Tensor,
    present: torch.Tensor,
    w_high: float,
    normalize: bool = True,
) -> torch.Tensor:
    """The fused anchors ``Â_i = (1 − w_high)·A_i + w_high·A_I`` of every layer (the last
    layer's are its own), optionally L2-normalised; all layers in one computation. Equals
    ``reference.updated_anchors``.

    Args:
        anchors: (I, N, D), or I tensors (N, D), lowest layer first.
        present: (N,) bool, the classes present at the last layer; a class that vanished at
            its resolution has no global anchor to fuse with and keeps its layer anchor.
        w_high: weight of the last layer's anchors.
        normalize: L2-normalise the fused anchors (so ``â · v / τ`` is a cosine over τ).

    Returns:
        (I, N, D).
    """
    if not isinstance(anchors, torch.Tensor):
        anchors = torch.stack(list(anchors))  # (I, N, D)
    layers = anchors.shape[0]
    mixed = torch.lerp(anchors, anchors[-1:], w_high)  # (I, N, D): (1 − w)·A_i + w·A_I
    # Fused are the lower layers' anchors of the classes present at the last layer.
    fuse = _lower_layers(layers, anchors.device) & present.view(1, -1, 1)  # (I, N, 1)
    fused = torch.where(fuse, mixed, anchors)
    return F.normalize(fused, dim=2) if normalize else fused


def layer_sums(
    coords: torch.Tensor,
    lift: torch.Tensor | None,
    one_hot: torch.Tensor,
    eps: float = 1e-12,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's normalisation and class sums of factored embeddings ``v = lift @ c``
    (eq. 1's numerator, lazily normalised: ``reference.representative_anchors`` times the
    class counts).

    Args:
        coords: (K, M) coordinates c, one column per pixel.
        lift: (D, K), or ``None`` for the identity (the coords are the embeddings).
        one_hot: (N, M) class membership of each pixel (:func:`class_one_hot`); at most one
            1 per column.
        eps: the norm's floor, as ``F.normalize``'s.
        rows: optional (M,) int64, each column's row of ``one_hot`` (any row in [0, N) where
            the column is all zero: an unlabelled pixel). With it the backward gathers those
            rows instead of keeping two (N, M) tensors until it runs.

    Returns:
        inverse: (M,) ``1 / max(‖v‖, eps)``; sums: (N, D) ``Σ_m one_hot[n, m] v_m / ‖v_m‖``,
        both with gradient (written out: :class:`_LayerSums`).
    """
    check_rank(coords, 2, "coords", "(K, M)")
    if lift is not None:
        check_rank(lift, 2, "lift", "(D, K)")
        if lift.shape[1] != coords.shape[0]:
            raise ValueError(
                f"lift has {lift.shape[1]} columns but coords have K={coords.shape[0]} channels"
            )
    if one_hot.dim() != 2 or one_hot.shape[1] != coords.shape[1]:
        raise ValueError(
            f"one_hot must have shape (N, M) with M={coords.shape[1]}, got {tuple(one_hot.shape)}"
        )
    if rows is not None and rows.shape != (coords.shape[1],):
        raise ValueError(f"rows must have shape (M,) = ({coords.shape[1]},), got {rows.shape}")
    return _LayerSums.apply(coords, lift, one_hot, eps, rows)


class _LayerSums(torch.autograd.Function):
    """:func:`layer_sums` with its gradient in closed form (s = cᵀ G c, G = liftᵀ lift):
    ``∂s/∂c = 2 G c``, ``∂/∂lift of Σ_m g_m s_m = 2 lift Σ_m g_m c_m c_mᵀ``,
    ``∂(1/√s)/∂s = −(1/√s)³ / 2`` (0 where the floor holds)."""

    @staticmethod
    def forward(ctx, coords, lift, one_hot, eps, rows):
        if lift is None:
            gram_coords = coords
        else:
            gram_coords = torch.mm(torch.mm(lift.transpose(0, 1), lift), coords)  # (K, M)
        squared = (coords * gram_coords).sum(0)  # (M,)
        # cᵀ G c can round slightly below 0 for a near-zero embedding: the floor covers it.
        clamped = squared.clamp_min(eps * eps)
        floored = clamped > squared
        inverse = clamped.rsqrt()  # (M,)
        weighted = one_hot * inverse  # (N, M)
        class_coords = torch.mm(weighted, coords.transpose(0, 1))  # (N, K)
        sums = class_coords if lift is None else torch.mm(class_coords, lift.transpose(0, 1))
        if rows is None:
            membership = (one_hot, weighted)
        else:  # (M,) each: a valid row per column, and the column's one-hot value (0 or 1)
            membership = (rows, one_hot.sum(0))
        ctx.save_for_backward(
            coords, lift, *membership, inverse, floored, class_coords, gram_coords
        )
        ctx.gather = rows is not None
        return inverse, sums  # (M,), (N, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_inverse, grad_sums):
        coords, lift, first, second, inverse, floored, class_coords, gram_coords = ctx.saved_tensors
        grad_lift = None
        grad_class = grad_sums  # (N, K)
        if lift is not None:
            grad_class = torch.mm(grad_sums, lift)
            grad_lift = torch.mm(grad_sums.transpose(0, 1), class_coords)  # (D, K)
        if ctx.gather:  # first: rows (M,), second: one_hot's column sums (M,)
            own = grad_class.index_select(0, first).transpose(0, 1)  # (K, M): own row's
            grad_coords = own * (second * inverse)
            through_sums = (own * coords).sum(0).mul_(second)  # (M,)
        else:  # first: one_hot (N, M), second: weighted (N, M)
            grad_coords = torch.mm(grad_class.transpose(0, 1), second)  # (K, M)
            through_sums = (torch.mm(grad_class, coords) * first).sum(0)  # (M,)
        grad_inverse = through_sums if grad_inverse is None else through_sums + grad_inverse
        # ∂(1/√s)/∂s = −(1/√s)³/2; the factors 2 of ∂s and −1/2 meet as −1 below.
        grad_squared = (grad_inverse * inverse * inverse * inverse).masked_fill_(floored, 0.0)
        grad_coords = torch.addcmul(grad_coords, gram_coords, grad_squared, value=-1.0)
        if lift is not None:
            square = torch.mm(coords * grad_squared, coords.transpose(0, 1))  # (K, K)
            grad_lift = torch.addmm(grad_lift, lift, square, alpha=-1.0)
        return grad_coords, grad_lift, None, None, None


class LayerGroup(NamedTuple):
    """Consecutive layers whose embeddings share one coordinate matrix: one factored layer
    (``v = lift @ c``), or several layers whose d-dim embeddings are formed, side by side.

    counts: the pixels M_i of each of its layers; coords: (K, Σ M_i), layer after layer;
    lift: (D, K), or ``None`` (the coords are the embeddings).
    """

    counts: tuple[int, ...]
    coords: torch.Tensor
    lift: torch.Tensor | None


@tensor_cache(maxsize=64)
def _group_rows(
    counts: tuple[int, ...], num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a group of layers with ``counts`` pixels: (rows (N, Σ M_i) int64, the row j·N + n
    of anchor n of each column's layer j; mask (I_g·N, Σ M_i) float32, row j·N + n is 1 on
    layer j's columns)."""
    layer = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    rows = layer * num_classes + torch.arange(num_classes).unsqueeze(1)  # (N, M)
    mask = layer == torch.arange(len(counts)).repeat_interleave(num_classes).unsqueeze(1)
    return rows.to(device), mask.float().to(device)


def group_one_hot(one_hot: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """one_hot: (N, Σ M_i) class membership of a group's pixels -> (I_g·N, Σ M_i), row j·N + n
    for the pixels of class n in layer j (what :func:`layer_sums` needs for per-layer sums)."""
    if len(counts) == 1:
        return one_hot
    mask = _group_rows(counts, one_hot.shape[0], one_hot.device)[1]
    return one_hot.repeat(len(counts), 1) * (
        mask if mask.dtype == one_hot.dtype else mask.to(one_hot.dtype)
    )


def layer_similarity(
    anchors: torch.Tensor,
    groups: Sequence[LayerGroup],
    inverse: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Every layer's anchor-pixel similarities ``â_i · v_m / (‖v_m‖ τ)`` side by side: the
    exponents of eq. 4 (``reference.info_nce``'s ``positives @ anchor / τ``).

    Args:
        anchors: (I, N, D) fused anchors.
        groups: the :class:`LayerGroup` s of the I layers, in order.
        inverse: (M,) ``1/‖v‖`` of all layers' pixels, M = Σ M_i, layer after layer.
        temperature: τ.

    Returns:
        (N, M), with gradient (written out: :class:`_LayerSimilarity`). ``â · v`` is computed
        as ``(â lift) · c``: the anchors move to each factored layer's coordinates; a group of
        several layers scores all its layers' anchors against all its pixels at once and
        keeps each pixel's own layer's rows.
    """
    pairs = [t for group in groups for t in (group.coords, group.lift)]
    counts = tuple(group.counts for group in groups)
    return _LayerSimilarity.apply(anchors, inverse, temperature, counts, *pairs)


def _group_anchors(anchors: torch.Tensor, first: int, layers: int) -> torch.Tensor:
    """anchors: (I, N, D) -> (layers·N, D), the anchors of layers first … first + layers − 1."""
    if layers == 1:
        return anchors[first]  # one op: the factored layer's
    return anchors[first : first + layers].reshape(-1, anchors.shape[2])


class _LayerSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, inverse, temperature, counts, *pairs):
        n = anchors.shape[1]
        projected, parts, first = [], [], 0
        for g, layer_counts in enumerate(counts):
            coords, lift = pairs[2 * g], pairs[2 * g + 1]
            group = _group_anchors(anchors, first, len(layer_counts))  # (I_g·N, D)
            q = group if lift is None else torch.mm(group, lift)  # (I_g·N, K)
            full = torch.mm(q, coords)  # (I_g·N, M_g)
            if len(layer_counts) > 1:
                full = full.gather(0, _group_rows(layer_counts, n, full.device)[0])  # (N, M_g)
            projected.append(q)
            parts.append(full)
            first += len(layer_counts)
        raw = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (N, M)
        ctx.reciprocal_temperature = constant(1.0 / temperature, raw.dtype, raw.device)
        scale = inverse * ctx.reciprocal_temperature  # (M,)
        ctx.counts = counts
        ctx.save_for_backward(anchors, scale, raw, *pairs, *projected)
        return raw * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        anchors, scale, raw = saved[:3]
        groups = len(ctx.counts)
        pairs, projected = saved[3 : 3 + 2 * groups], saved[3 + 2 * groups :]
        grad_inverse = (grad * raw).sum(0).mul_(ctx.reciprocal_temperature)  # (M,)
        grad_raw = grad * scale  # (N, M)
        n = anchors.shape[1]
        grad_anchors, grad_pairs, first = [], [], 0
        parts = grad_raw.split([sum(c) for c in ctx.counts], dim=1)
        for g, (part, layer_counts) in enumerate(zip(parts, ctx.counts)):
            coords, lift = pairs[2 * g], pairs[2 * g + 1]
            if len(layer_counts) > 1:  # back to every (layer, anchor) row
                rows = _group_rows(layer_counts, n, part.device)[0]
                full = part.new_zeros(len(layer_counts) * n, part.shape[1])
                part = full.scatter_(0, rows, part)  # (I_g·N, M_g)
            grad_projected = torch.mm(part, coords.transpose(0, 1))  # (I_g·N, K)
            grad_pairs.append(torch.mm(projected[g].transpose(0, 1), part))  # (K, M_g)
            if lift is None:
                grad_anchors.append(grad_projected)
                grad_pairs.append(None)
            else:
                grad_anchors.append(torch.mm(grad_projected, lift.transpose(0, 1)))
                group = _group_anchors(anchors, first, len(layer_counts))
                grad_pairs.append(torch.mm(group.transpose(0, 1), grad_projected))
            first += len(layer_counts)
        grad_anchors = torch.cat(grad_anchors).view(anchors.shape)  # (I, N, D)
        return grad_anchors, grad_inverse, None, None, *grad_pairs


def info_nce_from_logits(
    logits: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    extra_negative: torch.Tensor | None = None,
    blocks: Segments | None = None,
) -> torch.Tensor:
    """Masked InfoNCE, the common core of every contrastive loss here: with the layers as
    blocks, ``reference.pixel_anchor_loss`` of every layer at once (eq. 2–4).

    For each anchor a with at least one positive and one negative:
    ``mean over positives p of −log(exp(s_ap) / (exp(s_ap) + Σ_negatives exp(s_an)))``,
    computed as ``softplus(LSE_n s_an − s_ap)`` with the log-sum-exp shifted by the largest
    negative (stable at any temperature). The result is the mean over those anchors; an exact
    zero that keeps the graph when there is none.

    With ``blocks``, the columns fall into independent blocks (the loss's layers): each
    (anchor, block) pair is scored on its block's columns alone, and the result holds one
    such mean per block.

    The gradient is written out (:class:`_InfoNCE`): a handful of operations instead of the
    few dozen autograd would record; it is checked against autograd's in the tests.

    Args:
        logits: (A, C) similarities already divided by the temperature.
        positive: (A, C) bool.
        negative: (A, C) bool (disjoint from ``positive``).
        extra_negative: optional (A, C) bool (disjoint from ``positive``): negatives added to
            the denominator on top of ``negative``; a column in both counts twice.
        blocks: optional :class:`Segments` of the C columns.

    Returns:
        A scalar, or (S,) with ``blocks``.
    """
    one = blocks is None
    if one:
        blocks = segments((logits.shape[1],), logits.device)
    losses = _InfoNCE.apply(logits, positive, negative, extra_negative, blocks)  # (S,)
    return losses[0] if one else losses


class _InfoNCE(torch.autograd.Function):
    """Block-wise masked InfoNCE with its gradient in closed form.

    With z = LSE_s − s (LSE over the denominator of the row's block) and c[a, s] the weight
    of anchor a in block s's mean (``used / (#positives · #used anchors)``), the loss of block
    s is Σ_a Σ_{p ∈ s} c · softplus(z_ap), and for an upstream gradient g_s:
    ``∂/∂s_aj = q_a · w_aj exp(s_aj − LSE) − g c [j positive] σ(z_aj)`` with
    ``q_a = Σ_p g c σ(z_ap)`` and w the column's count in the denominator (0, 1 or 2).
    """

    @staticmethod
    def forward(ctx, logits, positive, negative, extra_negative, blocks):
        dtype, device = logits.dtype, logits.device
        zero = constant(0.0, dtype, device)
        # Each column's count in the denominator: 0, 1, or 2 for a negative that is also extra.
        weight = negative.to(dtype)
        denominator = negative
        if extra_negative is not None:
            weight = torch.where(extra_negative, weight + constant(1.0, dtype, device), weight)
            denominator = torch.bitwise_or(negative, extra_negative)
        minus_inf = constant(float("-inf"), dtype, device)
        masked = torch.where(denominator, logits, minus_inf)
        # The largest negative per (anchor, block) keeps exp() in range at any temperature;
        # it stays -inf where the block has no negative.
        shift = torch.full(
            (logits.shape[0], len(blocks.counts)), float("-inf"), dtype=dtype, device=device
        )
        shift.scatter_reduce_(1, blocks.ids.expand_as(masked), masked, "amax")
        no_negative = shift == minus_inf  # (A, S)
        shift.masked_fill_(no_negative, 0.0)  # (A, S)
        # In place where a temporary would double the (A, C) memory.
        terms = masked.sub_(shift.index_select(1, blocks.ids)).exp_().mul_(weight)  # (A, C)
        # A block without negatives sums to 0: log(1) keeps it finite (it is unused).
        sums = segment_sum(terms, blocks).masked_fill_(no_negative, 1.0)  # (A, S)
        gap = (shift + torch.log(sums)).index_select(1, blocks.ids) - logits  # (A, C): z
        positive = positive.to(dtype)
        num_positive = segment_sum(positive, blocks)  # (A, S)
        used = (num_positive > zero).masked_fill_(no_negative, False).to(dtype)  # (A, S)
        # Each anchor's share of its block's mean; anchors without a positive or a negative
        # are exact zeros (masking by multiplication: no host synchronisation).
        one = constant(1.0, dtype, device)
        anchors_used = torch.maximum(used.sum(0), one)  # (S,)
        share = used / (torch.maximum(num_positive, one) * anchors_used)
        per_pair = F.softplus(gap).mul_(positive)  # (A, C)
        weighted = per_pair.mul_(share.index_select(1, blocks.ids)).sum(0, True)  # (1, C)
        ctx.blocks = blocks
        # The backward needs σ(z) on the positive pairs only: saved as one (A, C) tensor
        # instead of z and the positives, one (N, M) float less held until the backward
        # (~60 MB at 171 classes and a 4 × 512 × 512 batch).
        positive_sigmoid = torch.sigmoid(gap).mul_(positive)  # (A, C)
        soft = terms.div_(sums.index_select(1, blocks.ids))  # (A, C), in place: memory
        ctx.save_for_backward(share, soft, positive_sigmoid)
        return segment_sum(weighted, blocks).view(-1)  # (S,)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        share, soft, positive_sigmoid = ctx.saved_tensors
        ids = ctx.blocks.ids
        scale = (share * grad).index_select(1, ids)  # (A, C): g · c of each pair's block
        direct = scale.mul_(positive_sigmoid)  # (A, C)
        through_lse = segment_sum(direct, ctx.blocks).index_select(1, ids)  # (A, C): q
        return through_lse * soft - direct, None, None, None, None


def info_nce_across_processes(
    logits: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    extra_negative: torch.Tensor | None,
    blocks: Segments,
    group=None,
) -> torch.Tensor:
    """:func:`info_nce_from_logits` over the pixels of every process of ``group``: each
    anchor's denominator sums its negatives on all processes, and the means run over all
    processes' positives and anchors, so the result is the loss of one process holding the
    whole batch.

    Each process passes its own pixels' columns (the anchors, rows, must be the same on all:
    global anchors). Three small collectives of (A, S) values: the shift (max), the
    denominators and positive counts (sum, differentiable), and the per-block losses (sum).
    Returns (S,) whose value is the whole batch's loss on every process and whose gradient
    is ``world_size ×`` this process's share: after DDP averages the gradients over the
    processes, they are the whole batch's. Plain autograd (no written-out gradient).
    """
    import torch.distributed as dist

    from contextrast.utils.distributed import sum_across_processes

    dtype, device = logits.dtype, logits.device
    world = dist.get_world_size(group)
    weight = negative.to(dtype)
    denominator = negative
    if extra_negative is not None:
        weight = weight + extra_negative.to(dtype)
        denominator = negative | extra_negative
    masked = torch.where(denominator, logits, float("-inf"))
    with torch.no_grad():
        shift = torch.full(
            (logits.shape[0], len(blocks.counts)), float("-inf"), dtype=dtype, device=device
        )
        shift.scatter_reduce_(1, blocks.ids.expand_as(masked), masked, "amax")
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)  # (A, S)
        no_negative = shift == float("-inf")
        shift = shift.masked_fill(no_negative, 0.0)
    terms = torch.exp(masked - shift.index_select(1, blocks.ids)) * weight  # (A, C)
    positive = positive.to(dtype)
    local = torch.stack([segment_sum(terms, blocks), segment_sum(positive, blocks)])
    sums, num_positive = sum_across_processes(local, group).unbind(0)  # (A, S) each, global
    sums = torch.where(no_negative, torch.ones_like(sums), sums)
    gap = (shift + torch.log(sums)).index_select(1, blocks.ids) - logits  # (A, C): z
    used = ((num_positive > 0) & ~no_negative).to(dtype)  # (A, S)
    share = used / (num_positive.clamp(min=1) * used.sum(0).clamp(min=1))  # (A, S)
    pairs = F.softplus(gap) * positive * share.index_select(1, blocks.ids)  # (A, C)
    mine = segment_sum(pairs.sum(0, keepdim=True), blocks).view(-1)  # (S,): this share
    total = mine.detach().clone()
    dist.all_reduce(total, group=group)
    scaled = mine * world
    return scaled + (total - scaled).detach()


@torch.no_grad()
def sample_per_row(mask: torch.Tensor, count: int, blocks: Segments | None = None) -> torch.Tensor:
    """At most ``count`` True entries per row of ``mask`` (per row and block of columns, with
    ``blocks``), chosen uniformly at random, independently for every row.

    mask: (R, M) bool; blocks: optional :class:`Segments` of the M columns. Returns (R, M)
    bool, a subset of ``mask``; rows (blocks) with at most ``count`` True entries are kept
    whole. Uses the global RNG of ``mask``'s device; no host sync.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be >= 1 (an int), got {count!r}")
    sizes = (mask.shape[1],) if blocks is None else blocks.counts
    if max(sizes) <= count:
        return mask.clone()
    device = mask.device
    # Independent uniform scores, -1 off the candidates: each row's ``count`` largest in a
    # block are a uniform sample of its candidates there (top-k per block, O(M) per row).
    score = torch.rand(mask.shape, device=device).masked_fill_(~mask, -1.0)
    picked = mask.clone()
    zero = constant(0.0, torch.float32, device)
    start = 0
    for size in sizes:
        if size > count:
            top = score.narrow(1, start, size).topk(count, dim=1, sorted=False)
            part = picked.narrow(1, start, size).zero_()
            part.scatter_(1, top.indices, top.values >= zero)
        start += size
    return picked


@torch.no_grad()
def sample_pairs(
    positive: torch.Tensor,
    negative: torch.Tensor,
    extra_negative: torch.Tensor | None,
    blocks: Segments | None,
    max_positives: int | None,
    max_negatives: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Bound each anchor's pairs: per row (anchor) and block (layer), at most
    ``max_positives`` of its positives, at most ``max_negatives`` of its negatives and,
    separately, of its extra negatives, each a uniform random subset (``None``: all).

    positive, negative, extra_negative: (N, M) bool. Returns the three subsets. It evens out
    large and small classes (a class of 10⁴ pixels and one of 10 then face denominators of
    similar size); masks with one bound are drawn in one call, rows independent.
    """
    masks = [positive, negative] + ([] if extra_negative is None else [extra_negative])
    bounds = [max_positives] + [max_negatives] * (len(masks) - 1)
    out: list[torch.Tensor | None] = list(masks)
    rows = positive.shape[0]
    for bound in dict.fromkeys(b for b in bounds if b is not None):  # a fixed order
        chosen = [i for i, b in enumerate(bounds) if b == bound]
        stacked = masks[chosen[0]] if len(chosen) == 1 else torch.cat([masks[i] for i in chosen])
        picked = sample_per_row(stacked, bound, blocks)
        parts = [picked] if len(chosen) == 1 else picked.view(len(chosen), rows, -1).unbind(0)
        for i, part in zip(chosen, parts):
            out[i] = part
    return out[0], out[1], out[2] if extra_negative is not None else None


@torch.no_grad()
def bound_pixels(
    labels: torch.Tensor,
    max_pixels: int,
    priority: torch.Tensor | None = None,
    blocks: Segments | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, Segments] | None:
    """The pixels that enter the (N, M) similarities when each layer may bring at most
    ``max_pixels``: every ``priority`` pixel first (the BANE negatives), then a uniform
    random share of the other labelled ones. Anchors still average all pixels.

    labels: (M,); priority: optional (M,) bool; blocks: the layers' :class:`Segments`.

    Returns (indices (M',), block after block, and the kept pixels' :class:`Segments`), or
    ``None`` when no block exceeds the bound. A block with more pixels but at most
    ``max_pixels`` labelled ones keeps all of those (and some unlabelled ones, which score
    nothing): the number of labelled pixels is never read back to the host.
    """
    counts = (labels.numel(),) if blocks is None else blocks.counts
    if max(counts) <= max_pixels:
        return None
    score = torch.rand(labels.shape, device=labels.device)
    if priority is not None:
        score = score + priority.to(score.dtype)
    score = score.masked_fill(labels == ignore_index, -1.0)
    keep, start = [], 0
    for count in counts:
        if count <= max_pixels:
            keep.append(torch.arange(start, start + count, device=labels.device))
        else:
            top = torch.topk(score[start : start + count], max_pixels, sorted=False)
            keep.append(top.indices + start)
        start += count
    kept = tuple(min(count, max_pixels) for count in counts)
    return torch.cat(keep), segments(kept, labels.device)


# --------------------------------------------------------------------------------------------
# BANE: error maps (eq. 6), exact Euclidean distance transform (eq. 7), selection
# --------------------------------------------------------------------------------------------


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


@functools.lru_cache(maxsize=64)
def _fraction(ratio: float) -> tuple[int, int]:
    """ratio as p/q (the nearest fraction with q ≤ 10⁶: 0.7 is 7/10, not its binary float)."""
    fraction = Fraction(ratio).limit_denominator(10**6)
    return fraction.numerator, fraction.denominator


def bane_select_labels(
    distance: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ratio: float,
    blocks: Segments | None = None,
) -> torch.Tensor:
    """BANE's selection on collapsed error maps: per class n, over the whole batch, the
    ⌈ratio · count_n⌉ pixels labelled n with the smallest distance (ties in (b, h, w) order);
    no host synchronisation. Equals ``reference.bane_select`` (per layer with ``blocks``).

    Args:
        distance: (B, H, W) float, e.g. :func:`error_distance` (any score: smaller first).
        labels: (B, H, W) int64 from :func:`error_labels` (N: no error).
        ratio: K in [0, 1].
        blocks: with (M,) flat ``distance`` and ``labels`` of I layers (a
            :class:`LayerLayout`'s segments), each layer's classes get their own quota.

    Returns:
        bool of ``labels``' shape: the selected error pixels.
    """
    check_fraction("ratio", ratio)
    flat_labels = labels if labels.dim() == 1 else labels.reshape(-1)  # (P,)
    device = labels.device
    errors = flat_labels < constant(num_classes, flat_labels.dtype, device)
    if ratio == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    if ratio == 1:
        return errors.view(labels.shape)
    if blocks is not None:
        # Class n of layer i becomes class i·N + n; the non-error pixels all become I·N.
        layers = len(blocks.counts)
        grouped = torch.add(flat_labels, blocks.ids, alpha=num_classes)
        none = constant(layers * num_classes, flat_labels.dtype, device)
        flat_labels = torch.where(errors, grouped, none)
        num_classes = layers * num_classes
    # Stable sorts: by distance, then by label, leave each class's pixels nearest-first and
    # the non-error pixels (label N) last; every size is fixed, so nothing waits for the host.
    order = torch.sort(distance.view(-1), stable=True).indices
    sorted_labels, regroup = torch.sort(flat_labels.index_select(0, order), stable=True)
    order = order.index_select(0, regroup)
    # Each sorted position's class run: where it starts and how long it is.
    first = torch.searchsorted(sorted_labels, sorted_labels)  # (P,)
    count = torch.searchsorted(sorted_labels, sorted_labels, right=True) - first
    rank = _arange(order.numel(), device) - first
    # ⌈ratio · count⌉ = (count·p + q − 1) // q in integers for ratio = p/q: exact, without
    # float artefacts such as 0.7 · 10 = 7.000000000000001.
    p, q = _fraction(ratio)
    quota = (count * constant(p, torch.long, device) + constant(q - 1, torch.long, device)).div(
        constant(q, torch.long, device), rounding_mode="floor"
    )
    chosen = (rank < quota).bitwise_and_(
        sorted_labels < constant(num_classes, sorted_labels.dtype, device)
    )
    # (the non-error pixels are never chosen)
    selected = torch.empty_like(errors).index_copy_(0, order, chosen)
    return selected if labels.dim() == 1 else selected.view(labels.shape)


def hard_negative_mask(
    hard: torch.Tensor,
    pred: torch.Tensor,
    num_classes: int,
    fallback: bool = True,
    blocks: Segments | None = None,
) -> torch.Tensor:
    """Turn selected error pixels into per-anchor negative masks (equals
    ``reference.hard_negative_mask``; per layer with ``blocks``).

    A pixel of class n predicted as m is a hard negative for the anchor of m (the class it
    was confused with), so row m of the mask holds the selected pixels predicted as m.

    Args:
        hard: (M,) bool, the selected error pixels.
        pred: (M,) predicted class per pixel.
        num_classes: N.
        fallback: rows (anchors) with no hard negative become all-True, i.e. keep their
            ordinary negatives; without it such anchors drop out of the loss.
        blocks: optional :class:`Segments` of the M pixels (the layers): the fallback then
            applies per row and block.

    Returns:
        (N, M) bool, for ``pixel_anchor_loss(negative_mask=...)``.
    """
    mask = (pred == class_rows(num_classes, pred.device)).bitwise_and_(hard)  # (N, M)
    if fallback:
        zero = constant(0.0, torch.float32, pred.device)
        mask = mask.bitwise_or_(~_segment_expand(segment_sum(mask, blocks) > zero, blocks))
    return mask
