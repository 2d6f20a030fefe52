"""Picking pixels: BANE's selection of the error pixels nearest the error edge
(:func:`bane_select_labels`), the hard-negative mask, and the random bounds on positives,
negatives and pixels. Sampling runs under ``no_grad``.

Internal: the fast path of :func:`contextrast.functional.contextrast_loss`; each piece names
the reference it equals (:mod:`contextrast.functional.reference`) and is tested against it.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import torch

from contextrast.functional._cache import _arange, constant
from contextrast.functional._layouts import (
    Segments,
    _segment_expand,
    class_rows,
    prefix_index,
    segment_sum,
    segments,
)
from contextrast.functional.checks import check_fraction

__all__ = [
    "bane_select_labels",
    "bound_pixels",
    "hard_negative_mask",
    "layer_random_order",
    "sample_pairs",
    "sample_per_row",
]


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
    device = labels.device
    if blocks is None:
        blocks = segments(counts, device)
    rank = (labels == ignore_index).to(torch.int64).mul_(2)  # (M,) 0 labelled, 2 unlabelled
    if priority is not None:
        rank.add_((~priority).to(torch.int64))  # priority pixels before the other labelled
    order = layer_random_order(rank, blocks)  # (M,)
    kept = tuple(min(count, max_pixels) for count in counts)
    return order.index_select(0, prefix_index(counts, kept, device)), segments(kept, device)


@torch.no_grad()
def layer_random_order(rank: torch.Tensor, blocks: Segments) -> torch.Tensor:
    """(M,) int64 the positions sorted by layer, then by ``rank`` (M,) int64 in [0, 4), then
    at random: one exact integer sort (40 random bits; ties are rare and only swap two
    equally likely positions). No host synchronisation."""
    key = torch.randint(0, 2**40, rank.shape, device=rank.device)
    key.add_(rank, alpha=2**41).add_(blocks.ids, alpha=2**43)
    return torch.argsort(key)


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
