"""CCL's differentiable cores: the class sums of eq. 1 (:func:`layer_sums`), the fused
anchors (:func:`fuse_anchors`) and the anchor-pixel similarities (:func:`layer_similarity`),
the two products with written-out gradients (double backward is refused).

Internal: the fast path of :func:`contextrast.functional.contextrast_loss`; each piece names
the reference it equals (:mod:`contextrast.functional.reference`) and is tested against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from contextrast.functional._cache import constant, tensor_cache
from contextrast.functional.checks import check_rank

__all__ = [
    "LayerGroup",
    "fuse_anchors",
    "group_one_hot",
    "group_row_offsets",
    "layer_similarity",
    "layer_sums",
]


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


@tensor_cache(maxsize=64)
def group_row_offsets(
    groups: tuple[tuple[int, ...], ...], num_classes: int, device: torch.device
) -> torch.Tensor:
    """(Σ M,) int64 j·N for each pixel of the j-th layer of its group, group after group
    (``groups``: each group's layer sizes): a pixel of class n is row j·N + n of its group's
    :func:`group_one_hot`."""
    layer = [torch.repeat_interleave(torch.arange(len(c)), torch.tensor(c)) for c in groups]
    return (torch.cat(layer) * num_classes).to(device)


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
