"""The pixel-anchor InfoNCE of eq. 2–4 on the sampled pixels only: work that grows with
N × (pool pixels) + M, not N·M.

Each pixel is a positive of one anchor only (its class's) and a BANE pick an extra negative
of one anchor only (its predicted class's): both are scored on the diagonal, one product
per pixel. Only the ordinary negatives need every anchor against every pixel, and they come
from one shared pool per layer: at most ``pool`` labelled pixels drawn at random, in random
order; anchor n's negatives are ``max_negatives`` consecutive pool pixels not of class n,
from rank ``n · max_negatives`` on (cyclically). Any such window of a random order is a
uniform sample of n's negatives, the draw of :func:`~._sampling.sample_pairs` row for row;
the windows of different anchors start apart, so that the anchors' negatives spread over the
pool rather than all being its first pixels.

Internal: :func:`contextrast.functional.contextrast_loss`'s ``pair_form="sparse"`` (and
``"auto"`` from :data:`~contextrast.functional.loss.SPARSE_FROM_CLASSES` classes on), faster
than the dense form from about 20 classes; below, the dense form is as fast or faster and
launches fewer operators (about 1,305 against 980 in issue 14's case). Its anchors share one
pool; on INIA19 it trained 1.3 to 1.7 mIoU below the dense form (3 seeds each, before and
after the spread windows; docs/method.md): not the default. Tested against
:func:`contextrast.functional.reference.pixel_anchor_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from contextrast.functional._anchors import LayerGroup, _group_rows
from contextrast.functional._cache import _arange, constant, tensor_cache
from contextrast.functional._layouts import Segments, prefix_index, segment_sum, segments
from contextrast.functional._sampling import layer_random_order

__all__ = ["SparsePairs", "sparse_info_nce", "sparse_pairs"]


class SparsePairs(NamedTuple):
    """Which pixels score against which anchors.

    positive: (M,) bool, a positive of its own class's anchor (of its layer); extra: (M,)
    bool, a BANE pick counted as a negative of its predicted class's anchor, or ``None``;
    picks: (T,) int64 the pool's pixels, layer after layer; pool: their :class:`Segments`;
    negative: (N, T) bool, anchor n's ordinary negatives among the pool pixels of its layer.
    """

    positive: torch.Tensor
    extra: torch.Tensor | None
    picks: torch.Tensor
    pool: Segments
    negative: torch.Tensor


@torch.no_grad()
def random_rank(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each entry's rank among the valid entries of its key, in a uniform random order.

    keys: (M,) int64 group of each entry; valid: (M,) bool. Returns (M,) int64 (entries
    that are not valid rank after every valid one of their key). No host synchronisation.
    """
    score = torch.rand(keys.shape, device=keys.device) + (~valid).to(torch.float32)
    order = torch.argsort(score)  # random among the valid entries, the others last
    grouped, regroup = torch.sort(keys.index_select(0, order), stable=True)
    order = order.index_select(0, regroup)  # by key, then by score
    first = torch.searchsorted(grouped, grouped)  # (M,) start of each entry's key run
    rank = torch.empty_like(keys)
    return rank.index_copy_(0, order, _arange(keys.numel(), keys.device) - first)


@tensor_cache(maxsize=64)
def _block_bounds(counts: tuple[int, ...], device) -> tuple[torch.Tensor, ...]:
    """(T,) the position before each entry's block start (0 for the first block), (T,) 1
    where there is one (0 in the first block) and (T,) the last position of its block: a
    running sum minus its value before the block is the running sum within the block, and
    at the block's last position its total."""
    blocks = segments(counts, device)
    last = blocks.first + torch.tensor(counts, device=device).index_select(0, blocks.ids) - 1
    return (blocks.first - 1).clamp(min=0), (blocks.first > 0).to(torch.int32), last


@tensor_cache(maxsize=64)
def _window_starts(num_classes: int, width: int, device) -> torch.Tensor:
    """(N, 1) int32 ``1 + n · width``: the 1-based rank at which anchor n's window of
    negatives starts."""
    starts = torch.arange(num_classes, dtype=torch.int32).mul_(width).add_(1)
    return starts.unsqueeze(1).to(device)


@torch.no_grad()
def _shared_pool(
    labels: torch.Tensor, blocks: Segments, pool: int | None, ignore_index: int, shuffle: bool
) -> tuple[torch.Tensor, Segments]:
    """Each layer's pool: at most ``pool`` of its labelled pixels in a random order (all of
    them for ``None``: shuffled with ``shuffle``, else in their own order, which draws nothing
    and sums in a fixed order). A layer with fewer labelled pixels fills up with unlabelled
    ones, which score nothing (the count is never read back to the host)."""
    bounded = pool is not None and max(blocks.counts) > pool
    if not shuffle and not bounded:
        return _arange(labels.numel(), labels.device), blocks
    # by layer, labelled before unlabelled, then at random
    order = layer_random_order((labels == ignore_index).to(torch.int64), blocks)  # (M,)
    if not bounded:
        return order, blocks
    kept = tuple(min(count, pool) for count in blocks.counts)
    return order.index_select(0, prefix_index(blocks.counts, kept, labels.device)), segments(
        kept, labels.device
    )


@torch.no_grad()
def sparse_pairs(
    labels: torch.Tensor,
    pred: torch.Tensor,
    hard: torch.Tensor | None,
    blocks: Segments,
    num_classes: int,
    ignore_index: int,
    hard_negatives: str,
    max_positives: int | None,
    max_negatives: int | None,
    pool: int | None,
) -> SparsePairs:
    """The pairs of every anchor and layer (:class:`SparsePairs`), drawn under ``no_grad``.

    Args:
        labels, pred: (M,) class ids (``ignore_index`` in labels), layer after layer.
        hard: (M,) bool BANE's picks (error pixels), or ``None``.
        blocks: the layers' :class:`Segments` of the M pixels.
        hard_negatives: ``"add"`` (a pick is one more negative of its predicted class's
            anchor), ``"only"`` (an anchor with picks in a layer contrasts against those
            alone) or ``"include"`` (ordinary negatives only).
        max_positives: per anchor and layer, at most this many positives (uniform).
        max_negatives: per anchor and layer, at most this many ordinary negatives (a window
            of the pool's random order, anchor n's from rank ``n · max_negatives`` on,
            cyclically) and, apart, this many picks.
        pool: per layer, the pixels every anchor is scored against for its ordinary
            negatives (``None``: the whole layer).
    """
    n, layers, device = num_classes, len(blocks.counts), labels.device
    layer = blocks.ids
    labelled = labels != constant(ignore_index, labels.dtype, device)
    positive, extra = labelled, None
    own_cell = labels.clamp(0, n - 1) * layers + layer  # (M,) (anchor, layer) of a positive
    picking = hard is not None and hard_negatives in ("add", "only")
    if picking:
        every_pick = hard  # as the dense form: a pick is its predicted class's negative
        extra = every_pick
        pred_cell = pred.clamp(0, n - 1) * layers + layer  # (M,) (anchor, layer) of a pick
    draw_positive = max_positives is not None
    draw_picks = picking and max_negatives is not None
    if draw_positive and draw_picks:  # one draw for both: the picks' cells come after
        keys = torch.cat([own_cell, pred_cell + n * layers])
        rank = random_rank(keys, torch.cat([labelled, every_pick])).view(2, -1)
        positive = labelled & (rank[0] < max_positives)
        extra = every_pick & (rank[1] < max_negatives)
    elif draw_positive:
        positive = labelled & (random_rank(own_cell, labelled) < max_positives)
    elif draw_picks:
        extra = every_pick & (random_rank(pred_cell, every_pick) < max_negatives)
    picks, kept = _shared_pool(labels, blocks, pool, ignore_index, max_negatives is not None)
    pool_labels = labels.index_select(0, picks)  # (T,)
    classes = torch.arange(n, device=device).unsqueeze(1)  # (N, 1)
    other = (pool_labels.unsqueeze(0) != classes).bitwise_and_(
        (pool_labels != constant(ignore_index, labels.dtype, device)).unsqueeze(0)
    )  # (N, T)
    negative = other
    if max_negatives is not None:
        # each row's rank among its other-class pool pixels of the same layer, in pool order
        running = other.to(torch.int32).cumsum(1)  # (N, T)
        previous, inside, last = _block_bounds(kept.counts, device)
        before = running.index_select(1, previous).mul_(inside)  # (N, T)
        within = running - before  # (N, T) 1-based
        total = (running.index_select(1, last) - before).clamp_(min=1)  # (N, T) others
        # Anchor n's window starts n · max_negatives ranks on, cyclically: any window of the
        # pool's random order is a uniform draw, and spread windows give more pixels a
        # negative's gradient than windows that all take the pool's first others.
        start = _window_starts(n, max_negatives, device)  # (N, 1)
        negative = other & (within.sub_(start).remainder_(total) < max_negatives)
    if extra is not None and hard_negatives == "only":
        # an anchor with any pick in a layer (before the bound) contrasts against picks alone
        counts = torch.zeros(n * layers, dtype=torch.float32, device=device)
        held = counts.index_add_(0, pred_cell, every_pick.float()).view(n, layers) > 0
        negative = negative & ~held.index_select(1, kept.ids)
        extra = extra & labelled  # as the dense form, whose negatives are labelled pixels
    return SparsePairs(positive, extra, picks, kept, negative)


class _Cells(NamedTuple):
    """Where each pixel's diagonal terms go. rows: (R, M) the anchor row ``layer · N +
    class`` of its class (row 0) and, with picks, of its predicted class (row 1);
    own_cell, pick_cell: (M,) the (anchor, layer) cell ``class · I + layer`` of the two."""

    rows: torch.Tensor
    own_cell: torch.Tensor
    pick_cell: torch.Tensor | None


class _SparseInfoNCE(torch.autograd.Function):
    """:func:`sparse_info_nce`'s scores and losses with the gradient written out (a handful
    of products instead of the hundreds of operators autograd would record).

    With z_p = LSE_c − s_p for positive p of cell c = (anchor, layer), c_c = used /
    (#positives · #used anchors of the layer) and g_l the upstream gradient: ∂/∂s_p =
    −g c σ(z_p), and every denominator term t of cell c gets Q_c · exp(s_t − LSE_c), Q_c =
    Σ_p g c σ(z_p). The scores are ``raw · inverse / τ`` with raw = q · coords, q the anchors
    in each group's coordinates (``â lift``).
    """

    @staticmethod
    def forward(ctx, anchors, inverse, meta, *group_tensors):
        pairs, cells, layout, temperature, world, group = meta
        blocks, groups = layout
        layers, n, _ = anchors.shape
        device, dtype = inverse.device, inverse.dtype
        extra = pairs.extra
        # the anchors in each group's coordinates: (I_g·N, K_g)
        projected, first = [], 0
        for counts, (_, lift) in zip(groups, _pairs_of(group_tensors)):
            local = anchors[first : first + len(counts)].reshape(-1, anchors.shape[2])
            projected.append(local if lift is None else torch.mm(local, lift))
            first += len(counts)
        raw_diagonal, raw_pool = _raw_scores(projected, group_tensors, groups, cells.rows, pairs)
        scale = inverse * constant(1.0 / temperature, dtype, device)  # (M,)
        scores = raw_diagonal * scale  # (R, M)
        s_positive = scores[0]
        pool_scale = scale.index_select(0, pairs.picks)  # (T,)
        minus_inf = constant(float("-inf"), dtype, device)
        masked = torch.where(pairs.negative, raw_pool * pool_scale, minus_inf)  # (N, T)
        pool_layer = pairs.pool.ids
        shift = torch.full((n, layers), float("-inf"), dtype=dtype, device=device)
        shift.scatter_reduce_(1, pool_layer.expand(n, -1), masked, "amax")
        if extra is not None:
            picked = torch.where(extra, scores[1], minus_inf)  # (M,)
            shift.view(-1).scatter_reduce_(0, cells.pick_cell, picked, "amax")
        if world > 1:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
        empty = shift == minus_inf  # (N, I): no negative on any process
        shift.masked_fill_(empty, 0.0)
        soft = masked.sub_(shift.index_select(1, pool_layer)).exp_()  # (N, T), in place
        sums = segment_sum(soft, pairs.pool)  # (N, I)
        soft_pick = None
        if extra is not None:
            soft_pick = picked.sub_(shift.view(-1).index_select(0, cells.pick_cell)).exp_()
            sums.view(-1).index_add_(0, cells.pick_cell, soft_pick)
        positive = pairs.positive.to(dtype)
        count = torch.zeros(n * layers, dtype=dtype, device=device).index_add_(
            0, cells.own_cell, positive
        )  # (N·I,)
        if world > 1:
            both = torch.cat([sums.view(-1), count])  # one collective
            dist.all_reduce(both, group=group)
            sums, count = both[: n * layers].view(n, layers), both[n * layers :]
        sums.masked_fill_(empty, 1.0)
        log_denominator = sums.log() + shift  # (N, I)
        gap = log_denominator.view(-1).index_select(0, cells.own_cell) - s_positive  # (M,) z
        one = constant(1.0, dtype, device)
        used = (count.view(n, layers) > 0).bitwise_and_(~empty).to(dtype)  # (N, I)
        share = used / (torch.maximum(count.view(n, layers), one) * torch.maximum(used.sum(0), one))
        weight = share.view(-1).index_select(0, cells.own_cell).mul_(positive)  # (M,)
        losses = segment_sum((F.softplus(gap) * weight).unsqueeze(0), blocks).view(-1)  # (I,)
        if world > 1:
            dist.all_reduce(losses, group=group)
        soft.div_(sums.index_select(1, pool_layer))  # (N, T): each term's softmax weight
        if soft_pick is not None:
            soft_pick.div_(sums.view(-1).index_select(0, cells.pick_cell))
        ctx.meta, ctx.shapes = (pairs, cells, layout, temperature, world, group), anchors.shape
        ctx.save_for_backward(
            inverse, scale, weight, torch.sigmoid(gap), soft,
            soft_pick if soft_pick is not None else torch.empty(0),
            raw_diagonal, raw_pool, anchors, *group_tensors, *projected,
        )  # fmt: skip
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        pairs, cells, layout, temperature, world, group = ctx.meta
        blocks, groups = layout
        layers, n, d = ctx.shapes
        saved = list(ctx.saved_tensors)
        _, scale, weight, sigma, soft, soft_pick = saved[:6]
        extra = pairs.extra
        raw_diagonal, raw_pool, anchors = saved[6:9]
        group_tensors = saved[9 : 9 + 2 * len(groups)]
        projected = saved[9 + 2 * len(groups) :]
        # ∂L/∂s of every term
        direct = grad.index_select(0, blocks.ids).mul_(weight).mul_(sigma)  # (M,) g c σ(z)
        q = torch.zeros(n * layers, dtype=grad.dtype, device=grad.device).index_add_(
            0, cells.own_cell, direct
        )  # (N·I,)
        if world > 1:
            dist.all_reduce(q, group=group)
        grad_pool = soft.mul(q.view(n, layers).index_select(1, pairs.pool.ids))  # (N, T)
        grad_diagonal = -direct.unsqueeze(0)  # (R, M)
        if extra is not None:
            grad_diagonal = torch.stack([-direct, soft_pick * q.index_select(0, cells.pick_cell)])
        # through scale = inverse / τ
        reciprocal = 1.0 / temperature
        grad_inverse = (grad_diagonal * raw_diagonal).sum(0).mul_(reciprocal)  # (M,)
        pool_inverse = (grad_pool * raw_pool).sum(0).mul_(reciprocal)  # (T,)
        grad_inverse = grad_inverse.index_add_(0, pairs.picks, pool_inverse)
        grad_raw = grad_diagonal.mul_(scale)  # (R, M)
        grad_raw_pool = grad_pool.mul_(scale.index_select(0, pairs.picks))  # (N, T)
        grads_anchors, grads_groups = _raw_backward(
            anchors, projected, group_tensors, groups, cells.rows, pairs, grad_raw, grad_raw_pool
        )
        grad_anchors = torch.cat(grads_anchors).view(layers, n, d)
        out = [grad_anchors, grad_inverse, *grads_groups]
        if world > 1:
            out = [None if t is None else t * world for t in out]
        return out[0], out[1], None, *out[2:]


def _pairs_of(group_tensors):
    """(coords, lift) of each group from the flat argument list."""
    return list(zip(group_tensors[0::2], group_tensors[1::2]))


def _group_spans(groups, pool: Segments):
    """Per group: (first layer, first pixel, pixels, first pool column, pool columns, the
    pool counts of its layers)."""
    spans, layer, pixel, column = [], 0, 0, 0
    for counts in groups:
        kept = pool.counts[layer : layer + len(counts)]
        spans.append((layer, pixel, sum(counts), column, sum(kept), kept))
        layer, pixel, column = layer + len(counts), pixel + sum(counts), column + sum(kept)
    return spans


def _raw_scores(projected, group_tensors, groups, rows, pairs):
    """raw = q · c: (R, M) each pixel against the anchor rows ``rows`` (R, M) name, and
    (N, T) each layer's anchors against its pool."""
    n = pairs.negative.shape[0]
    diagonal, pool = [], []
    spans = _group_spans(groups, pairs.pool)
    for q, (coords, _), (layer, pixel, width, column, kept, counts) in zip(
        projected, _pairs_of(group_tensors), spans
    ):
        own = rows.narrow(1, pixel, width) - layer * n  # (R, M_g) rows of q
        gathered = q.index_select(0, own.reshape(-1)).view(own.shape[0], width, -1)
        diagonal.append((gathered * coords.transpose(0, 1)).sum(2))  # (R, M_g)
        columns = coords.index_select(1, pairs.picks.narrow(0, column, kept) - pixel)
        full = torch.mm(q, columns)  # (I_g·N, T_g)
        if len(counts) > 1:  # each layer's anchor rows: (N, T_g)
            full = full.gather(0, _group_rows(counts, n, q.device)[0])
        pool.append(full)
    joined = diagonal[0] if len(diagonal) == 1 else torch.cat(diagonal, dim=1)  # (R, M)
    return joined, pool[0] if len(pool) == 1 else torch.cat(pool, dim=1)


def _raw_backward(anchors, projected, group_tensors, groups, rows, pairs, grad_raw, grad_pool):
    """The gradients of :func:`_raw_scores` (grad_raw (R, M), grad_pool (N, T)) to the
    anchors (per group, (I_g·N, d)) and to each group's coords and lift."""
    n, d = anchors.shape[1], anchors.shape[2]
    grads_anchors, grads_groups = [], []
    spans = _group_spans(groups, pairs.pool)
    for q, (coords, lift), (layer, pixel, width, column, kept, counts) in zip(
        projected, _pairs_of(group_tensors), spans
    ):
        own = rows.narrow(1, pixel, width) - layer * n  # (R, M_g)
        part = grad_raw.narrow(1, pixel, width).unsqueeze(2)  # (R, M_g, 1)
        coords_t = coords.transpose(0, 1)  # (M_g, K)
        grad_q = torch.zeros_like(q).index_add_(
            0, own.reshape(-1), (part * coords_t).reshape(-1, q.shape[1])
        )  # (I_g·N, K)
        gathered = q.index_select(0, own.reshape(-1)).view(own.shape[0], width, -1)
        grad_coords_t = (gathered * part).sum(0)  # (M_g, K)
        picked = pairs.picks.narrow(0, column, kept) - pixel
        pool_part = grad_pool.narrow(1, column, kept)  # (N, T_g)
        if len(counts) > 1:  # back to every (layer, anchor) row
            full = pool_part.new_zeros(q.shape[0], kept)
            pool_part = full.scatter_(0, _group_rows(counts, n, q.device)[0], pool_part)
        grad_q.addmm_(pool_part, coords_t.index_select(0, picked))
        grad_coords_t.index_add_(0, picked, torch.mm(pool_part.transpose(0, 1), q))
        grad_coords = grad_coords_t.transpose(0, 1)  # (K, M_g)
        if lift is None:
            grads_anchors.append(grad_q)
            grads_groups += [grad_coords, None]
        else:
            local = anchors[layer : layer + len(counts)].reshape(-1, d)  # (I_g·N, d)
            grads_anchors.append(torch.mm(grad_q, lift.transpose(0, 1)))
            grads_groups += [grad_coords, torch.mm(local.transpose(0, 1), grad_q)]  # (d, K)
    return grads_anchors, grads_groups


def sparse_info_nce(
    anchors: torch.Tensor,
    groups: Sequence[LayerGroup],
    inverse: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    blocks: Segments,
    pairs: SparsePairs,
    temperature: float,
    world: int = 1,
    group=None,
) -> torch.Tensor:
    """Every layer's ``L_PA,i`` (eq. 3–4) on the pairs of :func:`sparse_pairs`: per anchor,
    the mean over its positives p of ``softplus(LSE(negatives) − s_p)``, then the mean over
    the anchors with a positive and a negative; (I,), with gradient (written out:
    :class:`_SparseInfoNCE`).

    Args:
        anchors: (I, N, d) the fused anchors Â_i.
        groups: the layers' embeddings as :class:`~._anchors.LayerGroup` s (``v = lift @ c``).
        inverse: (M,) ``1/‖v‖`` of every pixel.
        labels, pred: (M,) as given to :func:`sparse_pairs`.
        world: with ``world`` > 1, the denominators, counts and means run over the pixels
            of every process of ``group`` (global anchors): every process gets the whole
            batch's loss, its gradient ``world ×`` this process's share (DDP's average then
            gives the whole batch's gradient).
    """
    layers, n, _ = anchors.shape
    layer = blocks.ids
    own = labels.clamp(0, n - 1)
    picked = pairs.extra is not None
    pick = pred.clamp(0, n - 1) if picked else None
    rows = torch.stack([own, pick]) if picked else own.unsqueeze(0)  # (R, M) classes
    cells = _Cells(
        rows + layer * n,
        own * layers + layer,
        pick * layers + layer if picked else None,
    )
    group_tensors = [t for g in groups for t in (g.coords, g.lift)]
    layout = (blocks, [g.counts for g in groups])
    meta = (pairs, cells, layout, temperature, world, group)
    return _SparseInfoNCE.apply(anchors, inverse, meta, *group_tensors)  # (I,)
