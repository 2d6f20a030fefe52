"""Contextrast++ (arXiv 2608.22679) as code: its class-prioritised anchors and anchor-to-anchor
InfoNCE (§3.3 of its text) and its learned anchor fusion (§3.2), one readable function per
equation, beside :mod:`.paper`'s Contextrast, and the oracle of the fast forms in
:mod:`contextrast.functional.anchor_memory` and :mod:`contextrast.functional.fusion`.
Readings where the text is open: docs/method.md, "Contextrast++".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from contextrast.functional.checks import check_rank
from contextrast.functional.reference.paper import info_nce

__all__ = [
    "adaptive_updated_anchors",
    "anchor_anchor_loss",
    "class_prioritized_anchors",
    "refine_anchor",
]


# Contextrast++ (arXiv 2608.22679), §3.3 of its text: the class-balanced anchor memory.
# Readings where the text is open (docs/method.md, "Contextrast++"): anchors are compared
# L2-normalised; the memory stores the raw (unfused) class-prioritised anchors, detached;
# a class's term averages over the positives its queue holds (1/K_M once full); the query
# is scored against the memory before this batch's anchors are pushed (no self-match).


def class_prioritized_anchors(
    anchors: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7–9 of Contextrast++: each class's anchor from the deepest layer where it survives.

    Args:
        anchors: (I, N, d) a_i^n (eq. 1), lowest layer first.
        counts: (N, I) pixels of class n at layer i (> 0: n ∈ N_i).

    Returns:
        ``S`` (N, d): S(c) = a_{i*(c)}^c with i*(c) = max{i : c ∈ N_i}; and ``present`` (N,)
        bool, N* = N_1 (the classes of the finest layer). Rows of absent classes are zeros.
    """
    check_rank(anchors, 3, "anchors", "(I, N, d)")
    check_rank(counts, 2, "counts", "(N, I)")
    layers, classes, _ = anchors.shape
    if tuple(counts.shape) != (classes, layers):
        raise ValueError(
            f"counts must have shape (N, I) = {(classes, layers)}, got {tuple(counts.shape)}"
        )
    chosen = torch.zeros_like(anchors[0])
    present = torch.zeros(classes, dtype=torch.bool, device=anchors.device)
    for c in range(classes):
        if counts[c, 0] <= 0:  # N* = N_1
            continue
        deepest = max(i for i in range(layers) if counts[c, i] > 0)
        chosen[c] = anchors[deepest, c]
        present[c] = True
    return chosen, present


def anchor_anchor_loss(
    queries: torch.Tensor,
    classes: torch.Tensor,
    memory: torch.Tensor,
    memory_classes: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Eq. 10–11 of Contextrast++: ``L_AA = 1/|N*| Σ_c L_a^c``, each ``L_a^c`` the InfoNCE of
    the class-prioritised anchor of c against the memory (positives: c's entries; negatives:
    every other class's).

    Args:
        queries: (C, d) ã^c, L2-normalised; classes: (C,) their class ids.
        memory: (Q, d) stored anchors, L2-normalised; memory_classes: (Q,) their classes.

    Returns:
        scalar; a class whose queue is still empty has no term, and with none the loss is 0
        (with the queries' graph).
    """
    terms = []
    for query, c in zip(queries, classes.tolist()):
        positives = memory[memory_classes == c]
        if len(positives) == 0:
            continue
        terms.append(info_nce(query, positives, memory[memory_classes != c], temperature))
    return torch.stack(terms).mean() if terms else queries.sum() * 0.0


# Contextrast++'s adaptive fusion (eq. 3 of its text). Readings (docs/method.md): F is one
# head of self-attention whose tokens are the d channels of one anchor vector, each channel j
# scoring every channel k by q_j·k_k/√d with q = W_q·a, k = W_k·a, v = W_v·a; each lower layer
# has its own module M_i (F and MLP), whose F refines both a_I and a_i; the MLP is
# Linear(2d, h) → GELU → Linear(h, d); the last layer is not fused (â_I = a_I).


def refine_anchor(anchor: torch.Tensor, query, key, value) -> torch.Tensor:
    """F of eq. 3: ``F(a)_j = Σ_k softmax_k(q_j·k_k/√d)·v_k``.

    Args:
        anchor: (d,) one anchor vector a.
        query, key, value: (d, d) W_q, W_k, W_v.

    Returns:
        (d,).
    """
    q, k, v = query @ anchor, key @ anchor, value @ anchor  # (d,) each
    attention = torch.softmax(torch.outer(q, k) / math.sqrt(anchor.shape[0]), dim=1)  # (d, d)
    return attention @ v


def adaptive_updated_anchors(
    anchors: Sequence[torch.Tensor],
    weights,
    present: Sequence[torch.Tensor],
    normalize: bool = False,
    residual: float | None = None,
) -> list[torch.Tensor]:
    """Eq. 3 of Contextrast++: ``â_i^n = MLP_i(F_i(a_I^n) ⊕ F_i(a_i^n))`` for n ∈ N_i ∩ N_I,
    ``â_i^n = a_i^n`` otherwise; ``Â_I = A_I``. With ``residual`` = w, the module's output
    is added to Contextrast's fixed fusion: ``(1 − w)·a_i^n + w·a_I^n + MLP_i(…)``.

    Args:
        anchors: I tensors (N, d), A_1 … A_I, lowest layer first.
        weights: a :class:`~contextrast.functional.fusion.FusionWeights`, module i's
            parameters at index i of each field.
        present: I tensors (N,) bool, N_i.
        normalize: L2-normalise each Â_i^n.
        residual: w_high of the fixed fusion the output is added to (``None``: replaced).

    Returns:
        I tensors (N, d).
    """
    last = anchors[-1]
    fused = []
    for i, a in enumerate(anchors[:-1]):
        rows = []
        for n in range(a.shape[0]):
            if not (bool(present[i][n]) and bool(present[-1][n])):
                rows.append(a[n])
                continue
            pair = [
                refine_anchor(x, weights.query[i], weights.key[i], weights.value[i])
                for x in (last[n], a[n])
            ]
            hidden = F.gelu(weights.hidden[i] @ torch.cat(pair) + weights.hidden_bias[i])
            out = weights.out[i] @ hidden + weights.out_bias[i]
            if residual is not None:
                out = out + (1 - residual) * a[n] + residual * last[n]
            rows.append(out)
        fused.append(torch.stack(rows))
    fused.append(last)
    return [F.normalize(a, dim=1) for a in fused] if normalize else fused
