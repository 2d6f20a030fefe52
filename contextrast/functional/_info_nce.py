"""The InfoNCE of eq. 2–4 over every layer at once, with its written-out gradient
(:class:`_InfoNCE`), and its form over several processes (global anchors).

Internal: the fast path of :func:`contextrast.functional.contextrast_loss`; each piece names
the reference it equals (:mod:`contextrast.functional.reference`) and is tested against it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from contextrast.functional._cache import constant
from contextrast.functional._layouts import Segments, segment_sum, segments

__all__ = [
    "info_nce_across_processes",
    "info_nce_from_logits",
]


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
    losses = _InfoNCE.apply(logits, positive, negative, extra_negative, blocks, None, 1)  # (S,)
    return losses[0] if one else losses


class _InfoNCE(torch.autograd.Function):
    """Block-wise masked InfoNCE with its gradient in closed form, in one process or over
    the columns of every process of a group (``world`` > 1).

    With z = LSE_s − s (LSE over the denominator of the row's block) and c[a, s] the weight
    of anchor a in block s's mean (``used / (#positives · #used anchors)``), the loss of block
    s is Σ_a Σ_{p ∈ s} c · softplus(z_ap), and for an upstream gradient g_s:
    ``∂/∂s_aj = q_a · w_aj exp(s_aj − LSE) − g c [j positive] σ(z_aj)`` with
    ``q_a = Σ_p g c σ(z_ap)`` and w the column's count in the denominator (0, 1 or 2).

    Over processes, the statistics that couple the columns are reduced: the shift (max), the
    denominators and positive counts (sum) and the losses (sum) in the forward, q (sum) in
    the backward. The gradient is then the whole batch's loss's with respect to this
    process's columns, times ``world``, so that DDP's average over the processes is the
    whole batch's gradient.
    """

    @staticmethod
    def forward(ctx, logits, positive, negative, extra_negative, blocks, group, world):
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
        if world > 1:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)  # (A, S)
        no_negative = shift == minus_inf  # (A, S)
        shift.masked_fill_(no_negative, 0.0)  # (A, S)
        # In place where a temporary would double the (A, C) memory.
        terms = masked.sub_(shift.index_select(1, blocks.ids)).exp_().mul_(weight)  # (A, C)
        positive = positive.to(dtype)
        sums = segment_sum(terms, blocks)  # (A, S)
        num_positive = segment_sum(positive, blocks)  # (A, S)
        if world > 1:
            both = torch.stack([sums, num_positive])  # (2, A, S): one collective
            dist.all_reduce(both, group=group)
            sums, num_positive = both.unbind(0)
        # A block without negatives sums to 0: log(1) keeps it finite (it is unused).
        sums = sums.masked_fill_(no_negative, 1.0)
        gap = (shift + torch.log(sums)).index_select(1, blocks.ids) - logits  # (A, C): z
        used = (num_positive > zero).masked_fill_(no_negative, False).to(dtype)  # (A, S)
        # Each anchor's share of its block's mean; anchors without a positive or a negative
        # are exact zeros (masking by multiplication: no host synchronisation).
        one = constant(1.0, dtype, device)
        anchors_used = torch.maximum(used.sum(0), one)  # (S,)
        share = used / (torch.maximum(num_positive, one) * anchors_used)
        per_pair = F.softplus(gap).mul_(positive)  # (A, C)
        weighted = per_pair.mul_(share.index_select(1, blocks.ids)).sum(0, True)  # (1, C)
        ctx.blocks, ctx.group, ctx.world = blocks, group, world
        # The backward needs σ(z) on the positive pairs only: saved as one (A, C) tensor
        # instead of z and the positives, one (N, M) float less held until the backward
        # (~60 MB at 171 classes and a 4 × 512 × 512 batch).
        positive_sigmoid = torch.sigmoid(gap).mul_(positive)  # (A, C)
        soft = terms.div_(sums.index_select(1, blocks.ids))  # (A, C), in place: memory
        ctx.save_for_backward(share, soft, positive_sigmoid)
        losses = segment_sum(weighted, blocks).view(-1)  # (S,)
        if world > 1:
            dist.all_reduce(losses, group=group)  # every process's pairs
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        share, soft, positive_sigmoid = ctx.saved_tensors
        ids = ctx.blocks.ids
        scale = (share * grad).index_select(1, ids)  # (A, C): g · c of each pair's block
        direct = scale.mul_(positive_sigmoid)  # (A, C)
        q = segment_sum(direct, ctx.blocks)  # (A, S)
        if ctx.world > 1:
            dist.all_reduce(q, group=ctx.group)  # the positives of every process
            return (q.index_select(1, ids) * soft - direct) * ctx.world, *([None] * 6)
        return q.index_select(1, ids) * soft - direct, *([None] * 6)


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
    global anchors). The same :class:`_InfoNCE`, with three small collectives of (A, S)
    values in the forward (the shift, the denominators with the positive counts, the
    losses) and one in the backward. Returns (S,) whose value is the whole batch's loss on
    every process and whose gradient is ``world_size ×`` this process's share: after DDP
    averages the gradients over the processes, they are the whole batch's.
    """
    world = dist.get_world_size(group)
    return _InfoNCE.apply(logits, positive, negative, extra_negative, blocks, group, world)
