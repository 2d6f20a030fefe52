"""Stateless math of Contextrast (paper §3.2–3.3, eq. 1–7).

Every function is pure, vectorised (no Python loop over pixels) and keeps its tensors on the
device of its inputs. The thin modules in :mod:`contextrast.contrast` hold hyper-parameters and
call these functions.

Reduced-precision inputs (bfloat16, float16) are computed in float32 with autocast disabled:
log-sum-exp over thousands of pixels at a temperature of 0.01 overflows half-precision ranges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The public functions; the losses, samplers, metrics and analyses import from these.
__all__ = [
    "anchors_from_flat",
    "bane_select",
    "bane_select_labels",
    "check_labels",
    "class_error_maps",
    "class_one_hot",
    "compute_dtype",
    "distance_transform",
    "error_distance",
    "error_labels",
    "fuse_anchors",
    "hard_negative_mask",
    "info_nce_from_logits",
    "lifted_norm",
    "pixel_anchor_loss",
    "pixel_anchor_loss_from_logits",
    "representative_anchors",
    "sample_per_row",
    "semi_hard_select",
    "supervised_contrastive_loss",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_rank(tensor: torch.Tensor, rank: int, name: str, shape: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(tensor)}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {shape} ({rank} dims), got {tuple(tensor.shape)}")


def _check_integer(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class indices, got {tensor.dtype}")


def check_labels(
    labels: torch.Tensor, num_classes: int, ignore_index: int, name: str = "labels"
) -> None:
    """Raise ``ValueError`` unless every value is in ``[0, num_classes)`` or ``ignore_index``.

    Costs one host synchronisation; it turns a silent wrong anchor into a clear error.
    """
    _check_integer(labels, name)
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} collides with a class id; expected a value outside "
            f"[0, {num_classes})"
        )
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:5].tolist()
        raise ValueError(
            f"{name} contains values {values} outside [0, {num_classes}) and not the "
            f"ignore_index {ignore_index}"
        )


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# CCL: representative anchors (eq. 1) and the pixel-anchor loss (eq. 3–4)
# --------------------------------------------------------------------------------------------


def class_one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot of class labels along a new dim 1; ignore (any value outside the classes) is 0.

    labels: (B, P) integer. Returns (B, N, P) of ``dtype``.
    """
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1)
    return (labels.unsqueeze(1) == classes).to(dtype)


def representative_anchors(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Representative anchors of eq. 1: per class, the plain mean of its embedding vectors.

    Args:
        embeddings: (B, D, H, W) pixel embeddings (normally L2-normalised).
        labels: (B, H, W) integer class ids at the same resolution; ``ignore_index`` allowed.
        num_classes: N.
        ignore_index: label value excluded from every class.

    Returns:
        anchors: (N, D) mean over the whole batch of the class's vectors, zero row for an
            absent class. Float32 (float64 for float64 input); carries gradient.
        present: (N,) bool, True where the class has at least one pixel.
    """
    _check_rank(embeddings, 4, "embeddings", "(B, D, H, W)")
    _check_rank(labels, 3, "labels", "(B, H, W)")
    b, _, h, w = embeddings.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"labels must have shape (B, H, W) = {(b, h, w)} to match embeddings, "
            f"got {tuple(labels.shape)}"
        )
    check_labels(labels, num_classes, ignore_index)
    dtype = compute_dtype(embeddings)
    with _no_autocast(embeddings.device):
        flat = embeddings.to(dtype).flatten(2)  # (B, D, P)
        one_hot = class_one_hot(labels.flatten(1), num_classes, dtype)  # (B, N, P)
        return anchors_from_flat(flat, one_hot)


def anchors_from_flat(
    flat: torch.Tensor, one_hot: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means of pixel vectors.

    Args:
        flat: (B, D, P) pixel vectors.
        one_hot: (B, N, P) class membership (:func:`class_one_hot`).
        scale: optional (B, P) factor per pixel, applied before averaging (e.g. ``1/‖v‖``,
            which averages the normalised vectors without forming them).

    Returns:
        anchors (N, D), present (N,) bool.
    """
    # A batched matmul with the one-hot is deterministic on every device, unlike scatter_add.
    weights = one_hot if scale is None else one_hot * scale.unsqueeze(1)  # (B, N, P)
    sums = torch.bmm(weights, flat.transpose(1, 2)).sum(0)  # (N, D)
    counts = one_hot.sum(dim=(0, 2))  # (N,)
    anchors = sums / counts.clamp(min=1).unsqueeze(1)
    return anchors, counts > 0


def fuse_anchors(
    anchors: Sequence[torch.Tensor],
    present: torch.Tensor,
    w_high: float,
    normalize: bool = True,
) -> list[torch.Tensor]:
    """The fused anchors ``Â_i = (1 − w_high)·A_i + w_high·A_I`` of every layer (the last
    layer's are its own), optionally L2-normalised.

    Args:
        anchors: I tensors (N, D), lowest layer first (:func:`anchors_from_flat`).
        present: (N,) bool, the classes present at the last layer; a class that vanished at
            its resolution has no global anchor to fuse with and keeps its layer anchor.
        w_high: weight of the last layer's anchors.
        normalize: L2-normalise the fused anchors (so ``â · v / τ`` is a cosine over τ).

    Returns:
        I tensors (N, D).
    """
    top = anchors[-1]
    fused = []
    for i, layer in enumerate(anchors):
        if i < len(anchors) - 1:
            mixed = (1.0 - w_high) * layer + w_high * top
            layer = torch.where(present.unsqueeze(1), mixed, layer)
        fused.append(F.normalize(layer, dim=1) if normalize else layer)
    return fused


def lifted_norm(
    coords: torch.Tensor, lift: torch.Tensor | None, eps: float = 1e-12
) -> torch.Tensor:
    """Per-pixel norm ``max(‖lift @ c‖, eps)`` of factored embeddings (``F.normalize``'s rule).

    Args:
        coords: (B, K, P) coordinates c of each pixel.
        lift: (D, K), or ``None`` for the identity (the coords are the embeddings).

    Returns:
        (B, P).
    """
    _check_rank(coords, 3, "coords", "(B, K, P)")
    if lift is None:
        return torch.linalg.vector_norm(coords, dim=1).clamp_min(eps)
    _check_rank(lift, 2, "lift", "(D, K)")
    if lift.shape[1] != coords.shape[1]:
        raise ValueError(
            f"lift has {lift.shape[1]} columns but coords have K={coords.shape[1]} channels"
        )
    gram = lift.t() @ lift  # (K, K)
    # cᵀ G c; rounding can make it slightly negative for a near-zero embedding.
    squared = (coords * torch.matmul(gram, coords)).sum(1)  # (B, P)
    return squared.clamp_min(eps * eps).sqrt()


def info_nce_from_logits(
    logits: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    extra_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked InfoNCE, the common core of every contrastive loss here.

    For each anchor a with at least one positive and one negative:
    ``mean over positives p of −log(exp(s_ap) / (exp(s_ap) + Σ_negatives exp(s_an)))``,
    computed as ``softplus(logsumexp_n s_an − s_ap)`` (stable at any temperature). The result
    is the mean over those anchors; an exact zero that keeps the graph when there is none.

    Args:
        logits: (A, C) similarities already divided by the temperature.
        positive: (A, C) bool.
        negative: (A, C) bool (disjoint from ``positive``).
        extra_negative: optional (A, C) bool (disjoint from ``positive``): negatives added to
            the denominator on top of ``negative``; a column in both counts twice.
    """
    masked = logits.masked_fill(~negative, float("-inf"))
    has_negative = negative.any(dim=1)  # (A,)
    if extra_negative is not None:
        extra = logits.masked_fill(~extra_negative, float("-inf"))
        masked = torch.cat([masked, extra], dim=1)  # (A, 2C)
        has_negative = has_negative | extra_negative.any(dim=1)
    num_positive = positive.sum(dim=1)  # (A,)
    used = has_negative & (num_positive > 0)  # (A,)
    # Rows without any negative would give logsumexp(-inf…) = -inf and a NaN gradient even
    # when masked out later, so they are neutralised before the reduction.
    masked = masked.masked_fill(~has_negative.unsqueeze(1), 0.0)
    negative_lse = torch.logsumexp(masked, dim=1, keepdim=True)  # (A, 1)
    per_pair = F.softplus(negative_lse - logits)  # (A, C)
    per_pair = torch.where(positive & used.unsqueeze(1), per_pair, torch.zeros_like(per_pair))
    per_anchor = per_pair.sum(dim=1) / num_positive.clamp(min=1).to(per_pair.dtype)  # (A,)
    # Unused rows are exact zeros: masking by multiplication needs no host synchronisation.
    num_used = used.sum().clamp(min=1).to(per_pair.dtype)
    return (per_anchor * used.to(per_pair.dtype)).sum() / num_used


def pixel_anchor_loss_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    negative_mask: torch.Tensor | None = None,
    ignore_index: int = 255,
    positive_mask: torch.Tensor | None = None,
    extra_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-anchor InfoNCE (eq. 3–4) from precomputed anchor-pixel logits.

    Args:
        logits: (N, M) ``anchor_n · v_m / τ`` for every anchor n and pixel m.
        labels: (M,) class id per pixel, ``ignore_index`` allowed (values assumed validated).
        negative_mask: optional (N, M) bool; anchor n's negatives are the valid pixels of
            another class AND this mask.
        ignore_index: label value that is neither positive nor negative.
        positive_mask: optional (N, M) bool; anchor n's positives are its class's pixels AND
            this mask (e.g. a random subset per anchor).
        extra_negative: optional (N, M) bool; these pixels of another class are added to
            anchor n's negatives, counted once more when they are negatives already.

    Returns:
        Scalar: mean over the anchors that have at least one positive and one negative of
        ``-1/|V+| Σ_{v+} log(exp(s+) / (exp(s+) + Σ_{v-} exp(s-)))``; an exact zero that keeps
        the graph when no anchor qualifies.
    """
    n = logits.shape[0]
    valid = labels != ignore_index  # (M,)
    classes = torch.arange(n, device=labels.device).unsqueeze(1)  # (N, 1)
    same = labels.unsqueeze(0) == classes  # (N, M)
    negative = valid.unsqueeze(0) & ~same  # (N, M)
    if negative_mask is not None:
        negative = negative & negative_mask
    positive = same if positive_mask is None else same & positive_mask
    if extra_negative is not None:
        extra_negative = extra_negative & valid.unsqueeze(0) & ~same
    return info_nce_from_logits(logits, positive, negative, extra_negative)


@torch.no_grad()
def sample_per_row(mask: torch.Tensor, count: int) -> torch.Tensor:
    """At most ``count`` True entries per row of ``mask``, chosen uniformly at random.

    mask: (R, M) bool. Returns (R, M) bool, a subset of ``mask``; rows with at most ``count``
    True entries are kept whole. Uses the global RNG of ``mask``'s device; no host sync.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    if mask.shape[1] <= count:
        return mask.clone()
    score = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    top = torch.topk(score, count, dim=1, sorted=False)  # (R, count)
    picked = torch.zeros_like(mask)
    picked.scatter_(1, top.indices, top.values >= 0)
    return picked


def supervised_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    contrast_features: torch.Tensor | None = None,
    contrast_labels: torch.Tensor | None = None,
    queue_features: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss over samples (pixel contrast, multi-/cross-scale contrast,
    and, with a queue, the memory-bank and region contrasts).

    Each sample is an anchor; its positives are the other samples of the contrast set with
    its label, its negatives those with another label; the per-positive term is the InfoNCE of
    :func:`info_nce_from_logits`, scaled by ``temperature / base_temperature`` as in the
    peers' code.

    Args:
        features: (A, D) L2-normalised anchor embeddings.
        labels: (A,) class ids.
        contrast_features: (C, D) an external set to contrast against instead of the anchors
            (the cross-scale term); default: the anchors themselves, each excluded as its own
            positive.
        contrast_labels: (C,) their class ids.
        queue_features: (Q, D) a memory (past batches) appended to the anchors' own contrast
            set, as pytorch-metric-learning's ``CrossBatchMemory`` passes its queue.
        queue_labels: (Q,) their class ids.
    """
    if not temperature > 0 or not base_temperature > 0:
        raise ValueError(f"temperatures must be > 0, got {temperature}, {base_temperature}")
    if (queue_features is None) != (queue_labels is None):
        raise ValueError("queue_features and queue_labels go together")
    self_contrast = contrast_features is None
    if self_contrast:
        contrast_features, contrast_labels = features, labels
        if queue_features is not None:
            contrast_features = torch.cat([features, queue_features.to(features.dtype)])
            contrast_labels = torch.cat([labels, queue_labels])
    elif queue_features is not None:
        raise ValueError("pass either contrast_features or a queue, not both")
    dtype = compute_dtype(features, contrast_features)
    with _no_autocast(features.device):
        logits = features.to(dtype) @ contrast_features.to(dtype).t() / temperature  # (A, C)
        same = labels.unsqueeze(1) == contrast_labels.unsqueeze(0)  # (A, C)
        positive, negative = same.clone(), ~same
        if self_contrast:
            positive.fill_diagonal_(False)  # anchor i is column i: not its own positive
        loss = info_nce_from_logits(logits, positive, negative)
    return loss * (temperature / base_temperature)


def pixel_anchor_loss(
    anchors: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    negative_mask: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Pixel-anchor loss of eq. 3–4 for one layer (the λ-weighted sum is the caller's).

    Args:
        anchors: (N, D) (fused) representative anchors.
        embeddings: (M, D) pixel embeddings.
        labels: (M,) class id per pixel; ``ignore_index`` pixels are skipped.
        temperature: τ > 0.
        negative_mask: optional (N, M) bool restricting each anchor's negatives.
        ignore_index: label value of unlabelled pixels.

    Returns:
        Scalar loss, float32 (float64 for float64 inputs). See
        :func:`pixel_anchor_loss_from_logits` for the exact reduction.
    """
    _check_rank(anchors, 2, "anchors", "(N, D)")
    _check_rank(embeddings, 2, "embeddings", "(M, D)")
    _check_rank(labels, 1, "labels", "(M,)")
    n, d = anchors.shape
    m = embeddings.shape[0]
    if embeddings.shape[1] != d:
        raise ValueError(
            f"embeddings must have shape (M, D) with D={d} as anchors, got "
            f"{tuple(embeddings.shape)}"
        )
    if labels.shape[0] != m:
        raise ValueError(f"labels must have shape (M,) = ({m},), got {tuple(labels.shape)}")
    if negative_mask is not None and (
        negative_mask.dtype != torch.bool or negative_mask.shape != (n, m)
    ):
        raise ValueError(
            f"negative_mask must be a bool tensor of shape (N, M) = {(n, m)}, got "
            f"{negative_mask.dtype} {tuple(negative_mask.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_labels(labels, n, ignore_index)
    dtype = compute_dtype(anchors, embeddings)
    with _no_autocast(anchors.device):
        logits = anchors.to(dtype) @ embeddings.to(dtype).t() / temperature  # (N, M)
        return pixel_anchor_loss_from_logits(logits, labels, negative_mask, ignore_index)


# --------------------------------------------------------------------------------------------
# BANE: error maps (eq. 6), exact Euclidean distance transform (eq. 7), selection
# --------------------------------------------------------------------------------------------


def class_error_maps(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    validate: bool = True,
) -> torch.Tensor:
    """Class-wise binary error maps of eq. 6: ``B^n = (pred != n) & (target == n)``.

    Args:
        pred: (B, H, W) predicted class ids in [0, N).
        target: (B, H, W) ground-truth ids, ``ignore_index`` allowed (never an error).
        validate: check the value ranges of both (two host synchronisations on a GPU);
            callers that already checked them pass ``False``.

    Returns:
        (B, N, H, W) bool: map n is ``error_labels(...) == n`` (a pixel is an error of its
        ground-truth class only).
    """
    labels = error_labels(pred, target, num_classes, ignore_index, validate)  # (B, H, W)
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, 1, 1)
    return labels.unsqueeze(1) == classes


def error_labels(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    validate: bool = True,
) -> torch.Tensor:
    """Eq. 6's N error maps collapsed into one label map: each pixel lies in at most one
    (its ground-truth class's), so ``labels == n`` is ``class_error_maps(...)[:, n]``.

    Args:
        pred: (B, H, W) predicted class ids in [0, N).
        target: (B, H, W) ground truth, ``ignore_index`` allowed (never an error).
        validate: check the value ranges (two host synchronisations on a GPU).

    Returns:
        (B, H, W) int64: the ground-truth class of each error pixel, N elsewhere.
    """
    _check_rank(pred, 3, "pred", "(B, H, W)")
    _check_rank(target, 3, "target", "(B, H, W)")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    _check_integer(pred, "pred")
    if validate:
        check_labels(target, num_classes, ignore_index, "target")
        if bool(((pred < 0) | (pred >= num_classes)).any()):
            raise ValueError(f"pred contains values outside [0, {num_classes})")
    wrong = (target != pred) & (target != ignore_index)
    return torch.where(wrong, target, num_classes).long()


def _other_label_squared_distance(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Squared Euclidean distance from each pixel to the nearest pixel of its map with
    another label (+inf when the map has no other label); exact, a fixed number of
    operations and no host synchronisation.

    labels: (K, H, W) integer -> (K, H, W). Separable (eq. 7): g, the distance along the
    longer axis to the end of the pixel's run of equal labels, then the min-plus
    ``D²(y) = min_y' [label(y') ≠ label(y) ? 0 : g²(y')] + (y − y')²`` over every position of
    the shorter axis at once: memory K·W·H² for H ≤ W.
    """
    transpose = labels.shape[1] > labels.shape[2]
    if transpose:
        labels = labels.transpose(1, 2)  # the min-plus runs along the shorter axis
    _, h, w = labels.shape
    position = torch.arange(w, device=labels.device)
    change = labels[..., 1:] != labels[..., :-1]  # (K, h, w − 1)
    edge = torch.ones_like(labels[..., :1], dtype=torch.bool)
    starts = torch.cat([edge, change], -1)  # (K, h, w): a run of equal labels starts here
    ends = torch.cat([change, edge], -1)
    start = torch.where(starts, position, 0).cummax(-1).values
    end = torch.where(ends, position, w - 1).flip(-1).cummin(-1).values.flip(-1)
    inf = torch.tensor(float("inf"), dtype=dtype, device=labels.device)
    left = torch.where(start > 0, (position - start + 1).to(dtype), inf)
    right = torch.where(end < w - 1, (end - position + 1).to(dtype), inf)
    row_squared = torch.minimum(left, right).square().transpose(1, 2)  # (K, w, h')
    column_labels = labels.transpose(1, 2)  # (K, w, h')
    rows = torch.arange(h, device=labels.device, dtype=dtype)
    offsets = (rows.unsqueeze(1) - rows.unsqueeze(0)).square()  # (h, h'): (y − y')²
    per_chunk = max(1, DENSE_EDT_LIMIT // (h * h * w))
    parts = []
    for g2, own in zip(row_squared.split(per_chunk), column_labels.split(per_chunk)):
        other = own.unsqueeze(3) != own.unsqueeze(2)  # (k, w, h, h'): another label at y'
        candidate = torch.where(other, 0.0, g2.unsqueeze(2)) + offsets  # (k, w, h, h')
        parts.append(candidate.amin(-1))  # (k, w, h)
    squared = torch.cat(parts)
    return squared if transpose else squared.transpose(1, 2)


def error_distance(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 7 for every class at once: for each error pixel (``labels`` < N, from
    :func:`error_labels`), the Euclidean distance to the nearest pixel outside its class's
    error map; 0 elsewhere; +inf for an error map that fills its image.

    Equal to ``distance_transform(class_error_maps(...))`` taken at each pixel's own class,
    with one map per image instead of N.

    Args:
        labels: (B, H, W) int64.

    Returns:
        (B, H, W) float32 (float64 when H² + W² ≥ 2²⁴).
    """
    _check_rank(labels, 3, "labels", "(B, H, W)")
    h, w = labels.shape[-2:]
    dtype = torch.float32 if h * h + w * w < 2**24 else torch.float64
    if labels.numel() == 0:
        return torch.zeros(labels.shape, dtype=dtype, device=labels.device)
    distance = _other_label_squared_distance(labels, dtype).sqrt()
    return torch.where(labels < num_classes, distance, 0.0)


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
    """Exact Euclidean distance transform, batched over all leading dimensions.

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
        squared = _other_label_squared_distance(mask.reshape(-1, h, w).long(), dtype)
        distance = torch.where(mask.reshape(-1, h, w), squared.sqrt(), 0.0)
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


def _ceil_fraction(ratio: float, counts: torch.Tensor) -> torch.Tensor:
    """⌈ratio · count⌉ without float artefacts such as 0.7 · 10 = 7.000000000000001."""
    product = ratio * counts.to(torch.float64)
    return torch.ceil(product * (1.0 - 1e-12)).to(torch.long)


def bane_select(distance: torch.Tensor, error_maps: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boundary-aware negatives: per class, the error pixels nearest to their region's edge.

    For each class n, over the whole batch, selects the ⌈ratio · count_n⌉ error pixels of
    class n with the smallest distance (ties broken arbitrarily).

    Args:
        distance: (B, N, H, W) float, e.g. ``distance_transform(error_maps)``.
        error_maps: (B, N, H, W) bool, eq. 6.
        ratio: K in [0, 1]; 0 selects nothing, 1 selects every error pixel.

    Returns:
        (B, N, H, W) bool, a subset of ``error_maps``.
    """
    _check_rank(error_maps, 4, "error_maps", "(B, N, H, W)")
    if error_maps.dtype != torch.bool:
        raise ValueError(f"error_maps must be bool, got {error_maps.dtype}")
    if distance.shape != error_maps.shape:
        raise ValueError(
            f"distance must have the shape of error_maps {tuple(error_maps.shape)}, got "
            f"{tuple(distance.shape)}"
        )
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    if ratio == 0:
        return torch.zeros_like(error_maps)
    if ratio == 1:
        return error_maps.clone()
    num_classes = error_maps.shape[1]
    # Each pixel is an error of at most one class (its ground truth's), as
    # class_error_maps gives: one label map and each pixel's own distance suffice.
    owner = torch.where(error_maps.any(1), error_maps.int().argmax(1), num_classes)  # (B, H, W)
    own = distance.gather(1, owner.clamp(max=num_classes - 1).unsqueeze(1)).squeeze(1)
    chosen = bane_select_labels(own, owner, num_classes, ratio)  # (B, H, W)
    return chosen.unsqueeze(1) & error_maps


def bane_select_labels(
    distance: torch.Tensor, labels: torch.Tensor, num_classes: int, ratio: float
) -> torch.Tensor:
    """BANE's selection on collapsed error maps: per class n, over the whole batch, the
    ⌈ratio · count_n⌉ pixels labelled n with the smallest distance (ties in (b, h, w) order);
    no host synchronisation.

    Args:
        distance: (B, H, W) float, e.g. :func:`error_distance` (any score: smaller first).
        labels: (B, H, W) int64 from :func:`error_labels` (N: no error).
        ratio: K in [0, 1].

    Returns:
        (B, H, W) bool: the selected error pixels.
    """
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    flat_labels = labels.reshape(-1)  # (P,)
    errors = flat_labels < num_classes
    if ratio == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    if ratio == 1:
        return errors.view(labels.shape)
    # Stable sorts: by distance, then by label, leave each class's pixels nearest-first and
    # the non-error pixels (label N) last; every size is fixed, so nothing waits for the host.
    order = torch.argsort(distance.reshape(-1), stable=True)
    order = order[torch.argsort(flat_labels[order], stable=True)]
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(0, flat_labels, torch.ones_like(flat_labels))  # (N + 1,)
    starts = torch.cumsum(counts, 0) - counts
    sorted_labels = flat_labels[order]
    rank = torch.arange(order.numel(), device=order.device) - starts[sorted_labels]
    quota = _ceil_fraction(ratio, counts)
    quota[num_classes] = 0  # the non-error pixels are never chosen
    selected = torch.empty_like(errors)
    selected[order] = rank < quota[sorted_labels]
    return selected.view(labels.shape)


def semi_hard_select(
    error_maps: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Semi-hard negatives (Table 6 ablation): per class, ⌈ratio · count⌉ error pixels
    chosen uniformly at random instead of nearest to the edge.

    error_maps: (B, N, H, W) bool. Returns (B, N, H, W) bool.
    """
    device = generator.device if generator is not None else error_maps.device
    scores = torch.rand(error_maps.shape, generator=generator, device=device)
    scores = scores.to(error_maps.device)
    return bane_select(scores, error_maps, ratio)


def hard_negative_mask(
    hard: torch.Tensor, pred: torch.Tensor, num_classes: int, fallback: bool = True
) -> torch.Tensor:
    """Turn selected error pixels into per-anchor negative masks.

    A pixel of class n predicted as m is a hard negative for the anchor of m (the class it
    was confused with), so row m of the mask holds the selected pixels predicted as m.

    Args:
        hard: (M,) bool, the selected error pixels.
        pred: (M,) predicted class per pixel.
        num_classes: N.
        fallback: rows (anchors) with no hard negative become all-True, i.e. keep their
            ordinary negatives; without it such anchors drop out of the loss.

    Returns:
        (N, M) bool, for ``pixel_anchor_loss(negative_mask=...)``.
    """
    classes = torch.arange(num_classes, device=pred.device).unsqueeze(1)  # (N, 1)
    mask = (pred.unsqueeze(0) == classes) & hard.unsqueeze(0)  # (N, M)
    if fallback:
        mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask
