"""The whole term as the papers write it: ``α·Σ_i λ_i L_PA,i`` with BANE (Contextrast eq. 1–7,
layer by layer, from :mod:`.paper`), with Contextrast++'s learned fusion as an option
(:mod:`.contextrast_pp`): the oracle of :func:`contextrast.functional.contextrast_loss`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from contextrast.functional.checks import (
    check_fraction,
    check_integer,
    check_loss_inputs,
    compute_dtype,
)
from contextrast.functional.reference.contextrast_pp import adaptive_updated_anchors
from contextrast.functional.reference.paper import (
    bane_select,
    class_error_maps,
    distance_map,
    hard_negative_mask,
    pa_loss,
    pixel_anchor_loss,
    representative_anchors,
    updated_anchors,
)

__all__ = ["contextrast_loss"]


def _nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer -> (B, h, w): ``F.interpolate(mode="nearest")``'s rule."""
    return F.interpolate(maps.unsqueeze(1).double(), size=size, mode="nearest")[:, 0].long()


def contextrast_loss(
    embeddings: Sequence[torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    layer_weights: Sequence[float],
    w_high: float,
    bane_ratio: float,
    loss_weight: float,
    ignore_index: int,
    hard_negatives: str,
    normalize_anchors: bool,
    fusion=None,
    fusion_residual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole contrastive term ``α·L_PA`` (eq. 1–4 and BANE), layer by layer, without the
    random per-anchor sampling (the fast path's ``max_positives = max_negatives = None``).
    The hyper-parameters are :class:`~contextrast.ContextrastLoss`'s (their defaults live
    there).

    Per layer i: v = π(f)/‖π(f)‖; g and ŷ = argmax(logits) resized to the layer (nearest);
    A_i (eq. 1), Â_i (§3.2); BANE: B^n (eq. 6), D^n (eq. 7), the K share nearest the edge per
    class; L_PA,i (eq. 3–4) with the hard negatives read as ``hard_negatives`` says
    (``"only"``: an anchor with hard negatives contrasts against those alone; ``"add"``: they
    join its ordinary negatives once more; ``"include"``: ordinary negatives only).

    Args:
        embeddings: I maps (B, d, h_i, w_i), the projection heads' outputs (unnormalised).
        logits: (B, N, h, w) the segmentation output (only its argmax is used).
        target: (B, H, W) ground truth, ``ignore_index`` allowed.
        fusion: Contextrast++'s learned fusion, ``FusionWeights`` (:func:`adaptive_updated_anchors`;
            added to §3.2's fixed one with ``fusion_residual``); ``None``: the fixed fusion.

    Returns:
        loss α·Σ λ_i L_PA,i (scalar, with gradient); layer_losses (I,) the L_PA,i;
        hard_counts (I,) int64, the BANE pixels selected per layer.
    """
    if hard_negatives not in ("only", "include", "add"):
        raise ValueError(f"unknown hard_negatives {hard_negatives!r}")
    check_fraction("bane_ratio", bane_ratio)
    if len(layer_weights) != len(embeddings):
        raise ValueError(f"{len(layer_weights)} layer_weights for {len(embeddings)} layers")
    check_loss_inputs([tuple(e.shape) for e in embeddings], logits, target)
    check_integer(target, "target")
    n = logits.shape[1]
    pred = logits.argmax(1)  # (B, h, w)
    v, g, y = [], [], []
    for e in embeddings:
        size = tuple(e.shape[-2:])
        v.append(F.normalize(e.to(compute_dtype(e)), dim=1))  # (B, d, h_i, w_i)
        g.append(_nearest(target, size))
        y.append(_nearest(pred, size))
    anchors, present = zip(
        *(representative_anchors(vi, gi, n, ignore_index) for vi, gi in zip(v, g))
    )
    if fusion is None:
        fused = updated_anchors(anchors, w_high, present[-1], normalize_anchors)
    else:
        residual = w_high if fusion_residual else None
        fused = adaptive_updated_anchors(anchors, fusion, present, normalize_anchors, residual)
    layer_losses, hard_counts = [], []
    for a, vi, gi, yi in zip(fused, v, g, y):
        errors = class_error_maps(yi, gi, n, ignore_index)  # (B, N, h, w)
        hard = bane_select(distance_map(errors), errors, bane_ratio).any(1).reshape(-1)  # (M,)
        flat_v = vi.permute(0, 2, 3, 1).reshape(-1, vi.shape[1])  # (M, d)
        flat_g, flat_y = gi.reshape(-1), yi.reshape(-1)
        negative_mask = extra = None
        if bane_ratio > 0 and hard_negatives == "only":
            negative_mask = hard_negative_mask(hard, flat_y, n, fallback=True)
        elif bane_ratio > 0 and hard_negatives == "add":
            extra = hard_negative_mask(hard, flat_y, n, fallback=False)
        layer_losses.append(
            pixel_anchor_loss(
                a, flat_v, flat_g, temperature, negative_mask, ignore_index, extra_negative=extra
            )
        )
        hard_counts.append(int(hard.sum()))
    loss = loss_weight * pa_loss(layer_losses, layer_weights)
    return loss, torch.stack(layer_losses).detach(), torch.tensor(hard_counts)
