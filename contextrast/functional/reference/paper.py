"""The paper as code: one readable function per equation of §3.2–3.3 (Sung et al.).

Each function is its equation written for the reader: the paper's symbols, loops over classes
and layers, plain autograd, nothing cached. They are the oracle that the fast path
(:mod:`contextrast.functional.batched`, what :class:`~contextrast.ContextrastLoss` runs) is
tested against, and what docs/method.md cites. Slow by design (a host synchronisation per
class); the analyses use them, a training step does not.

Symbols: I layers, N classes, d embedding dimensions, M pixels of one layer (all images of
the batch), τ the temperature. Where the paper leaves a choice open, the function takes the
reading the library implements and says so (docs/method.md lists every reading).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F

from contextrast.functional.checks import (
    check_fraction,
    check_labels,
    check_rank,
    compute_dtype,
)

__all__ = [
    "bane_select",
    "class_error_maps",
    "distance_map",
    "hard_negative_mask",
    "info_nce",
    "pa_loss",
    "pixel_anchor_loss",
    "quota",
    "representative_anchors",
    "semi_hard_select",
    "total_loss",
    "updated_anchors",
]


def representative_anchors(
    embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: ``a_i^n = Σ_{v ∈ V_i} v·1[g(v) = n] / Σ_{v ∈ V_i} 1[g(v) = n]``, the mean of the
    embeddings of class n over all images of the batch.

    Args:
        embeddings: (B, d, H, W) the embedded vectors V_i of one layer.
        labels: (B, H, W) g(v), the ground-truth class of each, ``ignore_index`` allowed.
        num_classes: N.

    Returns:
        A_i: (N, d), a zero row for a class without pixels (float32, float64 for float64
        input; with gradient); present: (N,) bool, the classes that have pixels.
    """
    check_rank(embeddings, 4, "embeddings", "(B, d, H, W)")
    check_rank(labels, 3, "labels", "(B, H, W)")
    b, d, h, w = embeddings.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"labels must have shape (B, H, W) = {(b, h, w)} to match embeddings, "
            f"got {tuple(labels.shape)}"
        )
    check_labels(labels, num_classes, ignore_index)
    with torch.autocast(embeddings.device.type, enabled=False):
        v = embeddings.to(compute_dtype(embeddings)).permute(0, 2, 3, 1).reshape(-1, d)  # (M, d)
        g = labels.reshape(-1)  # (M,)
        anchors = [
            v[g == n].mean(0) if bool((g == n).any()) else v.new_zeros(d)
            for n in range(num_classes)
        ]
    present = torch.stack([(g == n).any() for n in range(num_classes)])
    return torch.stack(anchors), present


def updated_anchors(
    anchors: Sequence[torch.Tensor],
    w_high: float,
    present: torch.Tensor | None = None,
    normalize: bool = False,
) -> list[torch.Tensor]:
    """§3.2: ``Â_i = w_l·A_i + w_h·A_I`` for the lower layers, ``Â_I = A_I``; w_l = 1 − w_h.

    Args:
        anchors: I tensors (N, d), A_1 … A_I, lowest layer first.
        w_high: w_h.
        present: (N,) bool, the classes present at the last layer. Reading: a class absent
            there has no a_I^n to fuse with and keeps its own a_i^n. None: all present.
        normalize: L2-normalise each Â_i^n (the library's default reading; the paper's
            means are not unit vectors).

    Returns:
        I tensors (N, d), Â_1 … Â_I.
    """
    check_fraction("w_high", w_high)
    if not anchors:
        raise ValueError("anchors must hold one (N, d) tensor per layer, got none")
    last = anchors[-1]
    fused = []
    for a in anchors[:-1]:
        mixed = (1.0 - w_high) * a + w_high * last
        fused.append(mixed if present is None else torch.where(present.unsqueeze(1), mixed, a))
    fused.append(last)
    return [F.normalize(a, dim=1) for a in fused] if normalize else fused


def info_nce(
    anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. 2 (and eq. 4's ``L_a`` averaged over ``V+``)::

        L = −1/|V+| Σ_{v+} log( exp(v·v+/τ) / (exp(v·v+/τ) + Σ_{v−} exp(v·v−/τ)) )

    Args:
        anchor: (d,) v (eq. 4: the representative anchor â_i^n).
        positives: (P, d) V+; negatives: (Q, d) V− (a vector listed twice counts twice).

    Returns:
        scalar; ``log(e^s / (e^s + Σ e^s−))`` is taken as ``s − logsumexp(s, s−…)``, the same
        number without overflow at small τ.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if len(positives) == 0:
        raise ValueError("info_nce needs at least one positive (V+ is empty)")
    positive = positives @ anchor / temperature  # (P,)
    negative = negatives @ anchor / temperature  # (Q,)
    denominator = torch.logsumexp(
        torch.cat([positive.unsqueeze(1), negative.expand(len(positive), -1)], dim=1), dim=1
    )  # (P,): log(e^{s+} + Σ e^{s−}) per positive
    return -(positive - denominator).mean()


def pixel_anchor_loss(
    anchors: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    negative_mask: torch.Tensor | None = None,
    ignore_index: int = 255,
    positive_mask: torch.Tensor | None = None,
    extra_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3–4 for one layer i: ``1/N Σ_n −1/|V+| Σ_{v+} L_a`` with the anchors Â_i.

    Anchor n's positives are the pixels of class n, its negatives the labelled pixels of the
    other classes. Reading of "1/N": the mean runs over the anchors that have at least one
    positive and one negative (an absent class has no term; a batch without any gives an
    exact 0 that keeps the graph).

    Args:
        anchors: (N, d) Â_i.
        embeddings: (M, d) the layer's pixel embeddings v.
        labels: (M,) class of each pixel, ``ignore_index`` for unlabelled ones.
        negative_mask: optional (N, M) bool: anchor n's negatives are also in row n (BANE's
            ``"only"`` reading: :func:`hard_negative_mask`).
        positive_mask: optional (N, M) bool: anchor n's positives are also in row n.
        extra_negative: optional (N, M) bool: pixels of other classes in row n join anchor
            n's negatives once more (BANE's ``"add"`` reading: a hard negative counts twice).

    Returns:
        scalar, float32 (float64 for float64 input).
    """
    check_rank(anchors, 2, "anchors", "(N, d)")
    check_rank(embeddings, 2, "embeddings", "(M, d)")
    check_rank(labels, 1, "labels", "(M,)")
    n_classes, d = anchors.shape
    m = embeddings.shape[0]
    if embeddings.shape[1] != d:
        raise ValueError(
            f"embeddings must have shape (M, D) with D={d} as anchors, got "
            f"{tuple(embeddings.shape)}"
        )
    if labels.shape[0] != m:
        raise ValueError(f"labels must have shape (M,) = ({m},), got {tuple(labels.shape)}")
    for name, mask in (
        ("negative_mask", negative_mask),
        ("positive_mask", positive_mask),
        ("extra_negative", extra_negative),
    ):
        if mask is not None and (mask.dtype != torch.bool or mask.shape != (n_classes, m)):
            raise ValueError(
                f"{name} must be a bool tensor of shape (N, M) = {(n_classes, m)}, got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_labels(labels, n_classes, ignore_index)
    dtype = compute_dtype(anchors, embeddings)
    with torch.autocast(anchors.device.type, enabled=False):
        anchors, v = anchors.to(dtype), embeddings.to(dtype)
        terms = []
        for n in range(n_classes):
            positive = labels == n
            other = (labels != n) & (labels != ignore_index)
            if positive_mask is not None:
                positive = positive & positive_mask[n]
            negative = other if negative_mask is None else other & negative_mask[n]
            negatives = v[negative]
            if extra_negative is not None:
                negatives = torch.cat([negatives, v[other & extra_negative[n]]])
            if bool(positive.any()) and len(negatives) > 0:
                terms.append(info_nce(anchors[n], v[positive], negatives, temperature))
        return torch.stack(terms).mean() if terms else (anchors.sum() + v.sum()) * 0.0


def pa_loss(layer_losses: Sequence[torch.Tensor], layer_weights: Sequence[float]) -> torch.Tensor:
    """Eq. 3's outer sum: ``L_PA = Σ_i λ_i L_PA,i`` (paper: λ = 0.1, 0.4, 0.7, 1.0)."""
    return sum(w * loss for w, loss in zip(layer_weights, layer_losses, strict=True))


def total_loss(ce: torch.Tensor, pa: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Eq. 5: ``L = L_CE + α·L_PA``."""
    return ce + alpha * pa


def class_error_maps(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    validate: bool = True,
) -> torch.Tensor:
    """Eq. 6: ``B^n(u, v) = 1[(ŷ ≠ n) ∧ (g = n)]``, the pixels of class n predicted as
    something else.

    Args:
        pred: (B, H, W) ŷ, predicted classes in [0, N).
        target: (B, H, W) g, ground truth, ``ignore_index`` allowed (never an error).
        validate: check both value ranges (``False``: the caller did).

    Returns:
        (B, N, H, W) bool; the maps are disjoint (a pixel is an error of its own class only).
    """
    check_rank(pred, 3, "pred", "(B, H, W)")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if validate:
        check_labels(target, num_classes, ignore_index, "target")
        if pred.is_floating_point() or bool(((pred < 0) | (pred >= num_classes)).any()):
            raise ValueError(f"pred contains values outside [0, {num_classes})")
    return torch.stack([(pred != n) & (target == n) for n in range(num_classes)], dim=1)


def distance_map(error_map: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``D(u, v) = min_{(x, y) ∈ E} √((u − x)² + (v − y)²)`` on each 2-D map.

    Reading of E, the edge: the pixels just outside the error region, so that D is the exact
    Euclidean distance transform (``scipy.ndimage.distance_transform_edt``'s values on maps
    with a pixel outside the region): 1 for an error pixel beside a correct one, 0 outside
    the region, and +inf in a map that is all error (no edge; SciPy returns finite values
    there).
    Brute force over every pair of pixels: memory (error pixels × other pixels) per map.

    Args:
        error_map: (..., H, W) bool, e.g. B^n.

    Returns:
        (..., H, W) float64.
    """
    if not isinstance(error_map, torch.Tensor) or error_map.dtype != torch.bool:
        raise ValueError("error_map must be a bool tensor of shape (..., H, W)")
    h, w = error_map.shape[-2:]
    maps = error_map.reshape(-1, h * w)  # (K, H·W)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([ys, xs], dim=-1).reshape(-1, 2).double().to(error_map.device)  # (H·W, 2)
    out = torch.zeros(maps.shape, dtype=torch.float64, device=error_map.device)
    for k, inside in enumerate(maps):
        if bool(inside.all()):
            out[k] = math.inf
        elif bool(inside.any()):
            out[k, inside] = torch.cdist(points[inside], points[~inside]).amin(dim=1)
    return out.view(error_map.shape)


def quota(ratio: float, count: int) -> int:
    """BANE's ``⌈K·count⌉``, K read as the nearest fraction with denominator ≤ 10⁶ (0.7 is
    7/10, so 0.7 of 10 pixels is 7, not 8 from 7.000000000000001)."""
    return math.ceil(Fraction(ratio).limit_denominator(10**6) * count)


def bane_select(distance: torch.Tensor, error_maps: torch.Tensor, ratio: float) -> torch.Tensor:
    """BANE's selection (§3.3): per class n, over the whole batch, the ⌈K·|B^n|⌉ error pixels
    with the smallest ``D^n`` (ties: the earlier pixel in (b, h, w) order).

    Args:
        distance: (B, N, H, W) D^n, e.g. :func:`distance_map` of the error maps.
        error_maps: (B, N, H, W) bool B^n.
        ratio: K in [0, 1] (paper: 0.5).

    Returns:
        (B, N, H, W) bool, a subset of ``error_maps``.
    """
    check_rank(error_maps, 4, "error_maps", "(B, N, H, W)")
    if error_maps.dtype != torch.bool:
        raise ValueError(f"error_maps must be bool, got {error_maps.dtype}")
    if distance.shape != error_maps.shape:
        raise ValueError(
            f"distance must have the shape of error_maps {tuple(error_maps.shape)}, got "
            f"{tuple(distance.shape)}"
        )
    check_fraction("ratio", ratio)
    b, n_classes, h, w = error_maps.shape
    errors = error_maps.transpose(0, 1).reshape(n_classes, -1)  # (N, B·H·W): B^n per row
    scores = distance.transpose(0, 1).reshape(n_classes, -1)  # (N, B·H·W): D^n per row
    chosen = torch.zeros_like(errors)
    for n in range(n_classes):
        pixels = errors[n].nonzero().squeeze(1)  # B^n's pixels in (b, h, w) order
        nearest = torch.sort(scores[n, pixels], stable=True).indices
        chosen[n, pixels[nearest[: quota(ratio, len(pixels))]]] = True
    return chosen.view(n_classes, b, h, w).transpose(0, 1)


def semi_hard_select(
    error_maps: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Table 6's semi-hard negatives: BANE's count per class, drawn uniformly at random
    instead of nearest to the edge. error_maps: (B, N, H, W) bool -> the same shape."""
    device = generator.device if generator is not None else error_maps.device
    scores = torch.rand(error_maps.shape, generator=generator, device=device)
    return bane_select(scores.to(error_maps.device), error_maps, ratio)


def hard_negative_mask(
    hard: torch.Tensor, pred: torch.Tensor, num_classes: int, fallback: bool = True
) -> torch.Tensor:
    """§3.3, "negative samples for each n-th representative anchor": a selected pixel of
    class n predicted as m is a hard negative of anchor m.

    Args:
        hard: (M,) bool, the selected error pixels of one layer.
        pred: (M,) ŷ of each pixel.
        fallback: an anchor without hard negatives keeps all its ordinary negatives (row all
            True); without it, its row is empty.

    Returns:
        (N, M) bool, row m the hard negatives of anchor m.
    """
    rows = []
    for m in range(num_classes):
        row = hard & (pred == m)
        rows.append(torch.ones_like(row) if fallback and not bool(row.any()) else row)
    return torch.stack(rows)
