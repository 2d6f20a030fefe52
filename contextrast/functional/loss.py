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

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from contextrast.functional import batched as B
from contextrast.functional.checks import (
    NonFiniteError,
    check_fraction,
    check_labels,
    check_loss_inputs,
    compute_dtype,
    is_finite,
    raise_if_nonfinite,
)
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

HARD_NEGATIVE_MODES = ("only", "include", "add")
#: how the pixel-anchor pairs are scored: "dense" (every anchor against every pixel, the
#: sampling as masks), "sparse" (positives and BANE picks one product per pixel, ordinary
#: negatives from a shared random pool per layer: :mod:`._sparse`), "auto" (sparse from
#: :data:`SPARSE_FROM_CLASSES` classes on).
PAIR_FORMS = ("auto", "dense", "sparse")
#: where "auto" turns sparse: the two cost the same at 19 classes on the CPU proxy (4 × 256 ×
#: 512), dense is 1.7× faster at 10 and sparse 2.7× at 171 (docs/benchmarks.md); below it
#: dense also launches fewer operators (issue 14's bound).
SPARSE_FROM_CLASSES = 20
#: the sparse form's pool per layer, in units of ``max_negatives``: a class holding at most
#: 3/4 of a layer's pixels still finds ``max_negatives`` others in it, on average.
POOL_PER_NEGATIVE = 4


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


def _check_hard(hard: torch.Tensor | None, labels: torch.Tensor) -> None:
    """``hard`` must be None or a bool mask of the labels' flat axis."""
    if hard is None or (
        torch.is_tensor(hard)
        and hard.dtype == torch.bool
        and hard.shape == labels.shape
        and hard.device == labels.device
    ):
        return
    got = (
        f"{hard.dtype} {tuple(hard.shape)} on {hard.device}"
        if torch.is_tensor(hard)
        else type(hard).__name__
    )
    raise ValueError(
        f"hard must be a bool mask of the layers' flat axis {tuple(labels.shape)} (a "
        f"sampler's pick on layer_targets' labels), got {got}"
    )


#: One layer's embeddings: a (B, d, h, w) map, or ``(coords (B, K, h, w), lift (d, K))`` with
#: ``v = lift @ c`` per pixel (:meth:`~contextrast.contrast.ProjectionHead.factored`).
Embedding = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_options(
    *,
    layers: int,
    temperature: float,
    layer_weights: Sequence[float],
    w_high: float,
    hard_negatives: str,
    max_pixels: int | None,
    max_positives: int | None,
    max_negatives: int | None,
    pair_form: str = "auto",
) -> None:
    """Raise a one-line ``ValueError`` naming the first bad hyper-parameter of the loss (the
    module's constructor and :func:`contextrast_loss` both call it)."""
    if len(layer_weights) != layers:
        raise ValueError(
            f"layer_weights has {len(layer_weights)} entries but there are {layers} layers; "
            "pass one weight per layer, lowest layer first"
        )
    if any(not (isinstance(x, (int, float)) and x >= 0) for x in layer_weights):
        raise ValueError(f"layer_weights must be numbers >= 0, got {list(layer_weights)}")
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and 0 < temperature < float("inf")
    ):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    check_fraction("w_high", w_high)
    if hard_negatives not in HARD_NEGATIVE_MODES:
        raise ValueError(
            f"unknown hard_negatives {hard_negatives!r}; choose from {list(HARD_NEGATIVE_MODES)}"
        )
    if pair_form not in PAIR_FORMS:
        raise ValueError(f"unknown pair_form {pair_form!r}; choose from {list(PAIR_FORMS)}")
    for name, value in (
        ("max_pixels", max_pixels),
        ("max_positives", max_positives),
        ("max_negatives", max_negatives),
    ):
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        ):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _shapes(pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list[tuple[int, ...]]:
    """Each layer's (B, d, h, w), d from the lift of a factored pair."""
    if not all(torch.is_tensor(coords) for coords, _ in pairs):
        kinds = [type(coords).__name__ for coords, _ in pairs]
        raise ValueError(f"embeddings must be tensors (or (coords, lift) pairs), got {kinds}")
    return [
        tuple(c.shape)
        if lift is None or c.dim() != 4
        else (c.shape[0], lift.shape[0], *c.shape[2:])
        for c, lift in pairs
    ]


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
    pair_form: str = "auto",
) -> ContextrastTerms:
    """``α·Σ_i λ_i L_PA,i`` over every layer at once (the hyper-parameters are
    :class:`~contextrast.ContextrastLoss`'s, which holds their defaults).

    Every layer's pixels lie on one flat axis (:class:`~.batched.LayerLayout`): labels, the
    masks, the sampling and the InfoNCE run once for all layers, each layer's terms kept
    apart by segment sums; only the products with each layer's own coordinates are per layer.

    Args:
        embeddings: I unnormalised embeddings (:data:`Embedding`), lowest layer first, any
            resolutions of one aspect ratio.
        logits: (B, N, h, w) segmentation output; only its argmax is used (for BANE).
        target: (B, H, W) class ids with ``ignore_index``; resized (nearest) per layer.
        hard: (M,) bool, the hard negatives a sampler picked on ``targets``' flat axis (for
            BANE: ``BaneSampler(K)(targets.labels, targets.pred, num_classes=N,
            layout=targets.layout)``); ``None``: plain CCL. Error pixels only (labelled,
            predicted wrongly): a pick becomes a negative of its predicted class's anchor,
            so a correctly predicted one would be its own anchor's positive too
            (:class:`~contextrast.ContextrastLoss` restricts the picks of a sampler that
            does not promise errors, ``picks_errors``).
        global_anchors: under ``torch.distributed`` with several processes, the anchors
            (eq. 1) and the InfoNCE denominators and means run over every process's pixels
            (:func:`_reduce_anchor_sums`, :func:`~.batched.info_nce_across_processes`): N
            processes with B/N images each give one process's loss on B images, with K = 0
            and sampling off. BANE's quota and the random sampling stay per process. No
            effect in one process.
        validate: check the label values (unless ``targets`` is given: its
            :func:`layer_targets` call checked them), and that the loss is finite (two host
            synchronisations; NaN or inf inputs raise :class:`~.checks.NonFiniteError` naming
            them); ``False`` when the caller checked them before training.
        process_group: the processes of ``global_anchors`` (default: all).
        targets: :func:`layer_targets` of these logits, target and the embeddings' sizes,
            where the caller made them for its sampler (made here otherwise); given, the
            labels and the prediction are read from it, not again from ``logits`` and
            ``target``.
        fusion: Contextrast++'s adaptive fusion's parameters (:func:`~.fusion.adaptive_fuse`
            replaces ``w_high``'s fixed fusion); ``None``: the fixed fusion.
        fusion_residual: with ``fusion``, its output is added to ``w_high``'s fixed fusion
            instead of replacing it.
        pair_form: :data:`PAIR_FORMS`: both forms equal the reference with the sampling off
            and draw each anchor's pairs uniformly with it on; their random draws differ.
    """
    if torch.is_tensor(embeddings) or len(embeddings) == 0:
        got = f"a tensor {tuple(embeddings.shape)}" if torch.is_tensor(embeddings) else "none"
        raise ValueError(f"embeddings must be a list of one map per layer (1 or more), got {got}")
    pairs = [(e, None) if torch.is_tensor(e) else e for e in embeddings]  # (coords, lift)
    sizes = tuple(tuple(coords.shape[-2:]) for coords, _ in pairs)
    _check_call(pairs, logits, target, loss_weight, layer_weights, targets, fusion, options=dict(
        temperature=temperature, w_high=w_high, hard_negatives=hard_negatives,
        max_pixels=max_pixels, max_positives=max_positives, max_negatives=max_negatives,
        pair_form=pair_form,
    ))  # fmt: skip
    if targets is None:
        targets = layer_targets(logits, target, sizes, ignore_index, validate)
    labels, layer_pred, blocks = targets.labels, targets.pred, targets.layout.segments
    _check_hard(hard, labels)
    picked = hard is not None
    if not picked:
        hard = torch.zeros_like(labels, dtype=torch.bool)
    n = logits.shape[1]
    device = target.device
    world = world_size(process_group) if global_anchors else 1
    with torch.autocast(device_type=device.type, enabled=False):
        dtype = compute_dtype(*(coords for coords, _ in pairs))
        groups = _group_layers(pairs, blocks.counts, dtype)
        is_class = labels == B.class_rows(n, device)  # (N, M)
        anchors, counts, inverse_norm = _class_anchors(
            groups, labels, is_class, blocks, dtype, world, process_group
        )  # (I, N, d), (N, I), (M,)
        if fusion is None:
            one = B.constant(1.0, dtype, device)
            present = counts.select(1, -1) >= one  # (N,) the classes of the last layer
            fused = B.fuse_anchors(anchors, present, w_high, normalize_anchors)
        else:
            # in the anchors' dtype: float32 at least, outside the caller's autocast
            fusion = FusionWeights(*(w if w.dtype == dtype else w.to(dtype) for w in fusion))
            residual = w_high if fusion_residual else None
            fused = adaptive_fuse(anchors, counts, fusion, normalize_anchors, residual)
        if detach_anchors:
            fused = fused.detach()
        if max_pixels is not None:
            bounded = B.bound_pixels(labels, max_pixels, hard, blocks, ignore_index)
            if bounded is not None:
                keep, blocks = bounded
                groups = _keep_columns(groups, keep, blocks.counts)
                maps = torch.stack([labels, layer_pred, hard.to(labels.dtype)])  # (3, M)
                kept = maps.index_select(1, keep)  # (3, M')
                labels, layer_pred, hard = kept[0], kept[1], kept[2].bool()
                inverse_norm = inverse_norm.index_select(0, keep)  # (M',)
                is_class = labels == B.class_rows(n, device)  # (N, M')
        if pair_form == "sparse" or (pair_form == "auto" and n >= SPARSE_FROM_CLASSES):
            pool = None if max_negatives is None else POOL_PER_NEGATIVE * max_negatives
            pairs_drawn = B.sparse_pairs(
                labels, layer_pred, hard if picked else None, blocks, n, ignore_index,
                hard_negatives, max_positives, max_negatives, pool,
            )  # fmt: skip
            stacked = B.sparse_info_nce(
                fused, groups, inverse_norm, labels, layer_pred, blocks, pairs_drawn,
                temperature, world, process_group,
            )  # (I,)  # fmt: skip
        else:
            similarity = B.layer_similarity(fused, groups, inverse_norm, temperature)  # (N, M)
            positive, negative, extra = _pairs(
                labels, layer_pred, is_class, hard if picked else None, blocks, ignore_index,
                hard_negatives, max_positives, max_negatives,
            )  # fmt: skip
            if world > 1:
                stacked = B.info_nce_across_processes(
                    similarity, positive, negative, extra, blocks, process_group
                )  # (I,)
            else:
                stacked = B.info_nce_from_logits(similarity, positive, negative, extra, blocks)
        weights = tuple(loss_weight * w for w in layer_weights)  # α·λ_i
        total = torch.dot(stacked, B.constant(weights, stacked.dtype, device))
        # integer sums: exact in any order (deterministic on every device)
        layers = torch.zeros(len(blocks.counts), dtype=torch.int64, device=device)
        hard_counts = layers.index_add_(0, blocks.ids, hard.to(torch.int64))  # (I,)
    if validate:
        _check_finite(total, logits, [coords for coords, _ in pairs])
    return ContextrastTerms(total, stacked.detach(), hard_counts, anchors, counts)


def _check_call(
    pairs: list[tuple[torch.Tensor, torch.Tensor | None]],
    logits: torch.Tensor,
    target: torch.Tensor,
    loss_weight: float,
    layer_weights: Sequence[float],
    targets: LayerTargets | None,
    fusion: FusionWeights | None,
    options: dict,
) -> None:
    """One-line errors for the options and the inputs' shapes, before any work."""
    sizes = tuple(tuple(coords.shape[-2:]) for coords, _ in pairs)
    check_options(layers=len(sizes), layer_weights=layer_weights, **options)
    if not isinstance(loss_weight, numbers.Real) or not 0 <= loss_weight < math.inf:
        raise ValueError(f"loss_weight must be a finite number >= 0, got {loss_weight!r}")
    shapes = _shapes(pairs)
    check_loss_inputs(shapes, logits, target)
    if targets is not None and (
        not isinstance(targets, LayerTargets)
        or targets.layout.sizes != sizes
        or targets.layout.batch != target.shape[0]
        or targets.labels.device != target.device
    ):
        got = (
            f"batch {targets.layout.batch}, sizes {list(targets.layout.sizes)} on "
            f"{targets.labels.device}"
            if isinstance(targets, LayerTargets)
            else type(targets)
        )
        raise ValueError(
            f"targets must be layer_targets(logits, target, sizes) of this batch "
            f"({target.shape[0]} images on {target.device}) and the embeddings' sizes "
            f"{list(sizes)}, got {got}"
        )
    d = shapes[0][1]
    if fusion is not None and (
        not isinstance(fusion, FusionWeights) or fusion.query.shape != (len(sizes) - 1, d, d)
    ):
        got = tuple(fusion.query.shape) if isinstance(fusion, FusionWeights) else type(fusion)
        raise ValueError(
            f"fusion must be FusionWeights of {len(sizes) - 1} modules for d = {d} (query "
            f"{(len(sizes) - 1, d, d)}), got {got}"
        )


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


def _check_finite(total: torch.Tensor, logits: torch.Tensor, embeddings: list) -> None:
    """One synchronisation: the loss and one logit. NaN embeddings make the loss NaN, but
    NaN logits leave it finite (BANE reads only their argmax), so one value of them joins
    the probe: a NaN from the model (its weights, a normalisation's statistics) fills its
    logits, and reading them all would cost more than the loss's budget of operators."""
    if is_finite(total + logits.as_strided((), ())):  # no backward ever reaches the sum
        return
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("logits hold NaN or inf values (BANE reads their argmax)")
    raise_if_nonfinite(embeddings, "embeddings")
    raise NonFiniteError(f"the loss is {total.item()} although its inputs are finite")


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
