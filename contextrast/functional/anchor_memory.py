"""Contextrast++'s anchor-to-anchor term, vectorised: the class-prioritised anchors (eq. 7–9)
and the InfoNCE of each against a memory of anchors (eq. 10–11).

Each function equals its reference in :mod:`contextrast.functional.reference`
(:func:`~.reference.class_prioritized_anchors`, :func:`~.reference.anchor_anchor_loss`;
tested), without a loop or a host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["anchor_anchor_loss", "class_prioritized_anchors"]


def class_prioritized_anchors(
    anchors: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's anchor from the deepest layer holding it; the classes of the finest.

    Args:
        anchors: (I, N, d) a_i^n, lowest layer first.
        counts: (N, I) pixels of class n at layer i.

    Returns:
        (N, d) S(c) (zeros where c ∉ N_1) and (N,) bool, c ∈ N_1.
    """
    layers = anchors.shape[0]
    held = counts > 0  # (N, I)
    # The deepest held layer: argmax of (i + 1)·held picks the last True of each row.
    rank = torch.arange(1, layers + 1, device=counts.device)
    deepest = (held * rank).argmax(dim=1)  # (N,)
    present = held[:, 0]
    chosen = anchors[deepest, torch.arange(anchors.shape[1], device=anchors.device)]  # (N, d)
    return chosen * present.unsqueeze(1).to(chosen.dtype), present


def anchor_anchor_loss(
    queries: torch.Tensor,
    classes: torch.Tensor,
    memory: torch.Tensor,
    memory_classes: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1/|C'| Σ_c −1/|P_c| Σ_{p ∈ P_c} log(e^{s_p} / (e^{s_p} + Σ_{n ∉ c} e^{s_n}))`` over
    the classes C' whose queue holds an entry.

    Args:
        queries: (C, d) L2-normalised; classes: (C,) their class ids.
        memory: (Q, d) L2-normalised; memory_classes: (Q,) their classes.
        mask: (C,) bool, the queries that count (all when ``None``): a fixed shape for
            the module, which scores every class and masks the absent ones.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    scores = queries @ memory.T / temperature  # (C, Q)
    own = classes.unsqueeze(1) == memory_classes.unsqueeze(0)  # (C, Q)
    positive = own if mask is None else own & mask.unsqueeze(1)
    # Not a negative: the query's own class, or an empty slot (a masked-out class's
    # entries stay negatives for the others). A finite fill (scores lie in [−1/τ, 1/τ])
    # keeps the gradient of an all-masked row finite, where −inf would make it NaN;
    # exp(−1e4) is 0 in any float.
    excluded = own | ~_valid(memory_classes)
    negatives = torch.logsumexp(scores.masked_fill(excluded, -1e4), dim=1)  # (C,)
    # −log(e^s / (e^s + e^L)) = softplus(L − s); with no negative it is softplus(−1e4) = 0.
    per_pair = F.softplus(negatives.unsqueeze(1) - scores) * positive  # (C, Q)
    count = positive.sum(dim=1)  # (C,)
    scored = count > 0
    per_class = per_pair.sum(dim=1) / count.clamp(min=1)  # (C,)
    return (per_class * scored).sum() / scored.sum().clamp(min=1)


def _valid(memory_classes: torch.Tensor) -> torch.Tensor:
    """(1, Q) entries that hold an anchor (an empty slot's class is −1)."""
    return (memory_classes >= 0).unsqueeze(0)
