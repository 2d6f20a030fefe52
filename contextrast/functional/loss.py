"""The whole contrastive term as one function on tensors: what
:class:`~contextrast.ContextrastLoss` calls after its projection heads, as smp's
``losses/_functional.py`` serves its loss modules.

One way, as pytorch-metric-learning's miner → loss: the caller lays the labels out
(:func:`layer_targets`), lets its sampler pick the hard negatives on them, runs its heads, and
makes one call of :func:`contextrast_loss` with the embeddings and the picked mask. Nothing
is passed down to be called back.

It equals :func:`contextrast.functional.reference.contextrast_loss` (eq. 1–4 with BANE, layer
by layer) when the random sampling is off (``max_positives = max_negatives = max_pixels =
None``), and is tested against it; with sampling on, each anchor's positives and negatives are
uniform random subsets of the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from contextrast.functional import batched as B
from contextrast.functional._options import (
    HARD_NEGATIVE_MODES,
    PAIR_FORMS,
    POOL_PER_NEGATIVE,
    SPARSE_FROM_CLASSES,
    Embedding,
    check_call,
    check_finite,
    check_hard,
    check_options,
)
from contextrast.functional._targets import LayerTargets, layer_targets
from contextrast.functional.checks import compute_dtype
from contextrast.functional.fusion import FusionWeights, adaptive_fuse
from contextrast.utils.distributed import sum_across_processes, world_size

__all__ = [
    "HARD_NEGATIVE_MODES",
    "PAIR_FORMS",
    "SPARSE_FROM_CLASSES",
    "ContextrastTerms",
    "LayerTargets",
    "check_options",
    "contextrast_loss",
    "layer_targets",
]


class ContextrastTerms(NamedTuple):
    """What one call of the loss computed.

    loss: scalar ``loss_weight · Σ_i λ_i L_PA,i`` (``+ loss_weight · L_AA`` with
        Contextrast++'s anchor memory), with gradient.
    layer_losses: (I,) detached, unweighted ``L_PA,i`` per layer, lowest layer first.
    hard_negatives: (I,) int64, number of BANE-selected pixels per layer.
    anchors: (I, N, d) the class anchors a_i^n of eq. 1 (unfused, with gradient; rows of
        absent classes are zeros).
    class_counts: (N, I) pixels of each class per layer (over every process with global
        anchors).
    anchor_loss: detached, unweighted ``L_AA`` (Contextrast++), or ``None`` without memory.
    """

    loss: torch.Tensor
    layer_losses: torch.Tensor
    hard_negatives: torch.Tensor
    anchors: torch.Tensor | None = None
    class_counts: torch.Tensor | None = None
    anchor_loss: torch.Tensor | None = None


def contextrast_loss(
    embeddings: Sequence[Embedding],
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    layer_weights: Sequence[float],
    w_high: float,
    loss_weight: float,
    ignore_index: int,
    hard: torch.Tensor | None,
    hard_negatives: str,
    max_pixels: int | None,
    max_positives: int | None,
    max_negatives: int | None,
    normalize_anchors: bool,
    detach_anchors: bool,
    global_anchors: bool,
    validate: bool = True,
    process_group=None,
    targets: LayerTargets | None = None,
    fusion: FusionWeights | None = None,
    fusion_residual: bool = False,
    pair_form: str = "dense",
) -> ContextrastTerms:
    """``α·Σ_i λ_i L_PA,i`` over every layer at once (the hyper-parameters are
    :class:`~contextrast.ContextrastLoss`'s, which documents them and holds their defaults:
    ``global_anchors``, ``validate`` and ``pair_form`` too).

    Args:
        embeddings: I unnormalised embeddings (:data:`Embedding`), lowest layer first.
        logits: (B, N, h, w) segmentation output; only its argmax is used (for BANE).
        target: (B, H, W) class ids with ``ignore_index``; resized (nearest) per layer.
        hard: (M,) bool, a sampler's pick of error pixels on ``targets``' flat axis (BANE:
            ``BaneSampler(K)(labels, pred, num_classes=N, layout=layout)``); ``None``: CCL.
        process_group: the processes of ``global_anchors`` (default: all).
        targets: :func:`layer_targets` of this batch (made here if ``None``).
        fusion: Contextrast++'s learned fusion's parameters (:func:`~.fusion.adaptive_fuse`;
            added to ``w_high``'s fixed fusion with ``fusion_residual``); ``None``: fixed.
    """
    pairs = check_call(embeddings, logits, target, loss_weight, layer_weights, targets, fusion,
        options=dict(temperature=temperature, w_high=w_high, hard_negatives=hard_negatives,
        max_pixels=max_pixels, max_positives=max_positives, max_negatives=max_negatives,
        pair_form=pair_form))  # fmt: skip  # [(coords, lift)] per layer
    if targets is None:
        sizes = [tuple(coords.shape[-2:]) for coords, _ in pairs]
        targets = layer_targets(logits, target, sizes, ignore_index, validate)
    labels, layer_pred, blocks = targets.labels, targets.pred, targets.layout.segments
    check_hard(hard, labels)
    picked = hard is not None  # a mask of no picks keeps one code path below
    # a pick predicted as its own class would be its own anchor's negative: dropped
    hard = hard & (labels != layer_pred) if picked else torch.zeros_like(labels, dtype=torch.bool)
    n, device = logits.shape[1], target.device
    world = world_size(process_group) if global_anchors else 1
    with torch.autocast(device_type=device.type, enabled=False):
        dtype = compute_dtype(*(coords for coords, _ in pairs))
        groups = _group_layers(pairs, blocks.counts, dtype)
        is_class = labels == B.class_rows(n, device)  # (N, M)
        anchors, counts, inverse_norm = _class_anchors(
            groups, labels, is_class, blocks, dtype, world, process_group
        )  # (I, N, d), (N, I), (M,)
        fused = _fuse(anchors, counts, fusion, w_high, fusion_residual, normalize_anchors)
        fused = fused.detach() if detach_anchors else fused
        columns = _Columns(groups, labels, layer_pred, hard, inverse_norm, is_class, blocks)
        if max_pixels is not None:
            columns = _bound_columns(columns, max_pixels, ignore_index)
        sparse = pair_form == "sparse" or (pair_form == "auto" and n >= SPARSE_FROM_CLASSES)
        score = _score_sparse if sparse else _score_dense  # PAIR_FORMS
        stacked = score(
            fused, columns, picked, temperature, ignore_index, hard_negatives, max_positives,
            max_negatives, world, process_group,
        )  # (I,)  # fmt: skip
        weights = tuple(loss_weight * w for w in layer_weights)  # α·λ_i
        total = torch.dot(stacked, B.constant(weights, stacked.dtype, device))
        # integer sums: exact in any order (deterministic on every device)
        zeros = B.constant((0,) * len(columns.blocks.counts), torch.int64, device)  # (I,)
        hard_counts = zeros.index_add(0, columns.blocks.ids, columns.hard.long())  # (I,)
    if validate:
        check_finite(total, logits, [coords for coords, _ in pairs])
    return ContextrastTerms(total, stacked.detach(), hard_counts, anchors, counts)


def _fuse(anchors, counts, fusion, w_high, residual, normalize):
    """``Â`` (I, N, d) from the anchors (I, N, d) and the class counts (N, I): the fixed
    fusion, or Contextrast++'s learned one (``fusion``; added to the fixed one with
    ``residual``)."""
    if fusion is None:
        one = B.constant(1.0, anchors.dtype, anchors.device)
        present = counts.select(1, -1) >= one  # (N,) the classes of the last layer
        return B.fuse_anchors(anchors, present, w_high, normalize)
    # in the anchors' dtype: float32 at least, outside the caller's autocast
    dtype = anchors.dtype
    fusion = FusionWeights(*(w if w.dtype == dtype else w.to(dtype) for w in fusion))
    return adaptive_fuse(anchors, counts, fusion, normalize, w_high if residual else None)


class _Columns(NamedTuple):
    """The pixels the InfoNCE scores, on one flat axis of M columns: the layer groups' coords,
    labels, prediction and hard-negative mask (M,), each pixel's ``1/‖v‖`` (M,), the
    ``labels == n`` rows (N, M) and the layers' :class:`~.batched.Segments`."""

    groups: list[B.LayerGroup]
    labels: torch.Tensor
    pred: torch.Tensor
    hard: torch.Tensor
    inverse: torch.Tensor
    is_class: torch.Tensor
    blocks: B.Segments


def _bound_columns(columns: _Columns, max_pixels: int, ignore_index: int) -> _Columns:
    """At most ``max_pixels`` columns per layer (:func:`~.batched.bound_pixels`)."""
    labels, blocks = columns.labels, columns.blocks
    bounded = B.bound_pixels(labels, max_pixels, columns.hard, blocks, ignore_index)
    if bounded is None:
        return columns
    keep, blocks = bounded
    maps = torch.stack([labels, columns.pred, columns.hard.to(labels.dtype)])  # (3, M)
    labels, pred, hard = maps.index_select(1, keep).unbind(0)  # (M',) each
    n = columns.is_class.shape[0]
    return _Columns(
        _keep_columns(columns.groups, keep, blocks.counts), labels, pred, hard.bool(),
        columns.inverse.index_select(0, keep), labels == B.class_rows(n, labels.device), blocks,
    )  # fmt: skip


def _score_dense(fused, columns, picked, temperature, ignore_index, hard_negatives,
                 max_positives, max_negatives, world, process_group):  # fmt: skip
    """Every layer's ``L_PA,i`` (I,) with every anchor against every column: the (N, M)
    similarities, the sampling as (N, M) masks, :func:`~.batched.info_nce_from_logits`."""
    c = columns
    similarity = B.layer_similarity(fused, c.groups, c.inverse, temperature)  # (N, M)
    positive, negative, extra = _pairs(
        c.labels, c.pred, c.is_class, c.hard if picked else None, c.blocks, ignore_index,
        hard_negatives, max_positives, max_negatives,
    )  # fmt: skip
    if world > 1:
        return B.info_nce_across_processes(
            similarity, positive, negative, extra, c.blocks, process_group
        )
    return B.info_nce_from_logits(similarity, positive, negative, extra, c.blocks)


def _score_sparse(fused, columns, picked, temperature, ignore_index, hard_negatives,
                  max_positives, max_negatives, world, process_group):  # fmt: skip
    """Every layer's ``L_PA,i`` (I,) on the sampled pairs only (:mod:`._sparse`): positives
    and picks one product each, the ordinary negatives from a pool of
    ``POOL_PER_NEGATIVE × max_negatives`` columns per layer."""
    c = columns
    n = fused.shape[1]
    pool = None if max_negatives is None else POOL_PER_NEGATIVE * max_negatives
    pairs = B.sparse_pairs(
        c.labels, c.pred, c.hard if picked else None, c.blocks, n, ignore_index,
        hard_negatives, max_positives, max_negatives, pool,
    )  # fmt: skip
    return B.sparse_info_nce(
        fused, c.groups, c.inverse, c.labels, c.pred, c.blocks, pairs, temperature, world,
        process_group,
    )  # fmt: skip


def _class_anchors(
    groups: list[B.LayerGroup],
    labels: torch.Tensor,
    is_class: torch.Tensor,
    blocks: B.Segments,
    dtype: torch.dtype,
    world: int,
    process_group,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1 for every layer: the anchors (I, N, d), the class counts (N, I) (over every
    process when ``world`` > 1) and each pixel's inverse embedding norm (M,).

    labels: (M,) class ids; is_class: (N, M) bool, ``labels == n``.
    """
    n, device = is_class.shape[0], labels.device
    one_hot = is_class.to(dtype)
    counts = B.segment_sum(one_hot, blocks)  # (N, I)
    # Each pixel's row of its group's one-hot (j·N + its class; any for unlabelled ones) lets
    # the backward gather by it instead of keeping two (I_g·N, M_g) tensors, and with them
    # the whole one-hot, alive until it runs, and multiplying through them: O(M·d), not N·M.
    widths = [sum(g.counts) for g in groups]
    rows = labels.clamp(0, n - 1)  # (M,)
    if any(len(g.counts) > 1 for g in groups):
        rows = rows + B.group_row_offsets(tuple(g.counts for g in groups), n, device)
    inverse, sums = [], []
    for group, part, group_rows in zip(groups, one_hot.split(widths, 1), rows.split(widths)):
        group_inverse, group_sums = B.layer_sums(
            group.coords, group.lift, B.group_one_hot(part, group.counts), rows=group_rows
        )
        inverse.append(group_inverse)  # (M_g,)
        sums.append(group_sums)  # (I_g·N, d)
    inverse_norm = torch.cat(inverse) if len(inverse) > 1 else inverse[0]  # (M,)
    sums = (torch.cat(sums) if len(sums) > 1 else sums[0]).view(len(blocks.counts), n, -1)
    if world > 1:
        sums, counts = _reduce_anchor_sums(sums, counts, process_group)
    one = B.constant(1.0, dtype, device)
    anchors = sums / torch.maximum(counts, one).transpose(0, 1).unsqueeze(2)  # (I, N, d)
    return anchors, counts, inverse_norm


def _pairs(
    labels: torch.Tensor,
    layer_pred: torch.Tensor,
    is_class: torch.Tensor,
    hard: torch.Tensor | None,
    blocks: B.Segments,
    ignore_index: int,
    hard_negatives: str,
    max_positives: int | None,
    max_negatives: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each anchor's positives and negatives (N, M) bool, and the hard negatives counted
    once more (``"add"``) or None; sampled down to the bounds.

    labels, layer_pred: (M,); is_class: (N, M); hard: (M,) bool, the sampler's pick, or None.
    """
    n, device = is_class.shape[0], labels.device
    labelled = labels != B.constant(ignore_index, labels.dtype, device)
    negative = (~is_class).bitwise_and_(labelled)  # (N, M)
    extra = None
    if hard is not None and hard_negatives == "only":
        negative.bitwise_and_(B.hard_negative_mask(hard, layer_pred, n, blocks=blocks))
    elif hard is not None and hard_negatives == "add":
        # Selected pixels are errors: labelled and never of the row's class.
        extra = B.hard_negative_mask(hard, layer_pred, n, fallback=False)
    if max_positives is None and max_negatives is None:
        return is_class, negative, extra
    return B.sample_pairs(is_class, negative, extra, blocks, max_positives, max_negatives)


def _group_layers(
    embedded: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    counts: Sequence[int],
    dtype: torch.dtype,
) -> list[B.LayerGroup]:
    """Each factored layer as its own group; each run of consecutive formed layers as one
    (scored in one product).

    embedded: per layer, (coords (B, K, h, w), lift (d, K) or None: the coords are v).
    """
    groups, run = [], []

    def close_run():
        if run:
            coords = torch.cat([c for c, _ in run], dim=1) if len(run) > 1 else run[0][0]
            groups.append(B.LayerGroup(tuple(m for _, m in run), coords, None))
            run.clear()

    for (coords, lift), count in zip(embedded, counts):
        coords = coords if coords.dtype == dtype else coords.to(dtype)
        flat = coords.transpose(0, 1).reshape(coords.shape[1], -1)  # (K, B·h·w)
        if lift is None:
            run.append((flat, count))
            continue
        close_run()
        groups.append(B.LayerGroup((count,), flat, lift if lift.dtype == dtype else lift.to(dtype)))
    close_run()
    return groups


def _keep_columns(
    groups: list[B.LayerGroup], keep: torch.Tensor, kept: tuple[int, ...]
) -> list[B.LayerGroup]:
    """The groups restricted to the kept pixels: ``keep`` (M',) flat indices, layer after
    layer, ``kept`` pixels of each layer (what :func:`~.batched.bound_pixels` returns)."""
    out, start, position, layer = [], 0, 0, 0
    for group in groups:
        layer_kept = kept[layer : layer + len(group.counts)]
        part = keep[position : position + sum(layer_kept)] - start  # (M'_g,) group columns
        out.append(B.LayerGroup(layer_kept, group.coords.index_select(1, part), group.lift))
        start += sum(group.counts)
        position += sum(layer_kept)
        layer += len(group.counts)
    return out


def _reduce_anchor_sums(
    sums: torch.Tensor, counts: torch.Tensor, group
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 over every process's images: the class sums (I, N, d), with gradient, and the
    class counts (N, I) summed across ``group`` in one differentiable all-reduce (its
    backward sums the processes' gradients, as the anchors are shared)."""
    flat = torch.cat([sums.reshape(-1), counts.reshape(-1)])  # (I·N·d + N·I,)
    reduced = sum_across_processes(flat, group)
    return reduced[: sums.numel()].view_as(sums), reduced[sums.numel() :].view_as(counts)
