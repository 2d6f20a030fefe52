"""Contextrast++'s adaptive anchor fusion (eq. 3 of its text), vectorised over the fusion
modules and the classes:

    â_i^n = MLP( F(a_I^n) ⊕ F(a_i^n) )  if n ∈ N_i ∩ N_I,  else  â_i^n = a_i^n,

(or, as a residual, ``(1 − w)·a_i^n + w·a_I^n + MLP(…)``: Contextrast's fixed fusion plus
a learned correction),

F a single-head self-attention over the d channels of one anchor vector. Equals
:func:`~contextrast.functional.reference.adaptive_updated_anchors` (tested), without a loop
or a host synchronisation. The parameters come in as tensors (:class:`FusionWeights`), as
``F.linear`` takes its weight: the module that learns them
(:class:`~contextrast.contrast.fusion.AnchorFusion`) owns them, this file only computes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["FusionWeights", "adaptive_fuse", "refine"]


class FusionWeights(NamedTuple):
    """The I − 1 fusion modules M_1 … M_{I−1} (one per lower layer), stacked on dim 0.

    query, key, value: (I−1, d, d), F's maps (``q = W_q·a``); hidden: (I−1, h, 2d) and
    hidden_bias: (I−1, h), the MLP's first layer; out: (I−1, d, h) and out_bias: (I−1, d),
    its second.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    hidden: torch.Tensor
    hidden_bias: torch.Tensor
    out: torch.Tensor
    out_bias: torch.Tensor


def refine(anchors: torch.Tensor, weights: FusionWeights) -> torch.Tensor:
    """F of every anchor: each channel j of ``a`` attends over all channels k with score
    ``q_j·k_k / √d`` (q = W_q·a, k = W_k·a) and takes ``Σ_k softmax_k · v_k``.

    Args:
        anchors: (L, P, d), module l's P anchor vectors (L = I − 1).

    Returns:
        (L, P, d).
    """
    d = anchors.shape[-1]
    q = torch.bmm(anchors, weights.query.transpose(1, 2))  # (L, P, d)
    k = torch.bmm(anchors, weights.key.transpose(1, 2))  # (L, P, d)
    v = torch.bmm(anchors, weights.value.transpose(1, 2))  # (L, P, d)
    scores = q.unsqueeze(-1) * k.unsqueeze(-2) / math.sqrt(d)  # (L, P, d, d): (j, k)
    return torch.matmul(scores.softmax(dim=-1), v.unsqueeze(-1)).squeeze(-1)  # (L, P, d)


def adaptive_fuse(
    anchors: torch.Tensor,
    counts: torch.Tensor,
    weights: FusionWeights,
    normalize: bool = True,
    residual: float | None = None,
) -> torch.Tensor:
    """Every layer's fused anchors; the last layer's are its own (â_I = a_I).

    Args:
        anchors: (I, N, d) a_i^n (eq. 1), lowest layer first.
        counts: (N, I) pixels of class n at layer i (> 0: n ∈ N_i).
        weights: the I − 1 modules' parameters.
        normalize: L2-normalise the fused anchors, as the fixed fusion does.
        residual: w_high: the modules' output is added to the fixed fusion ``(1 − w)·a_i +
            w·a_I`` (``None``: it replaces it).

    Returns:
        (I, N, d).
    """
    layers, n, d = anchors.shape
    low, high = anchors[:-1], anchors[-1:].expand(layers - 1, n, d)  # (L, N, d) each
    # One refine call for both inputs of each module: they share its F.
    refined = refine(torch.cat([high, low], dim=1), weights)  # (L, 2N, d)
    joined = torch.cat([refined[:, :n], refined[:, n:]], dim=2)  # (L, N, 2d): F(a_I) ⊕ F(a_i)
    hidden = F.gelu(
        torch.baddbmm(weights.hidden_bias.unsqueeze(1), joined, weights.hidden.transpose(1, 2))
    )  # (L, N, h)
    mixed = torch.baddbmm(
        weights.out_bias.unsqueeze(1), hidden, weights.out.transpose(1, 2)
    )  # (L, N, d)
    if residual is not None:
        mixed = mixed + torch.lerp(low, high, residual)
    held = counts > 0  # (N, I)
    fuse = (held[:, :-1] & held[:, -1:]).transpose(0, 1).unsqueeze(2)  # (L, N, 1): N_i ∩ N_I
    fused = torch.cat([torch.where(fuse, mixed, low), anchors[-1:]])  # (I, N, d)
    return F.normalize(fused, dim=2) if normalize else fused
