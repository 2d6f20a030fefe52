"""The supervised contrastive loss of the peer methods (pixel contrast, multi-/cross-scale
contrast, and, with a queue, the memory-bank and region contrasts)."""

from __future__ import annotations

import torch

from contextrast.functional.batched import info_nce_from_logits
from contextrast.functional.checks import compute_dtype

__all__ = ["supervised_contrastive_loss"]


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
    with torch.autocast(features.device.type, enabled=False):
        logits = features.to(dtype) @ contrast_features.to(dtype).t() / temperature  # (A, C)
        same = labels.unsqueeze(1) == contrast_labels.unsqueeze(0)  # (A, C)
        positive, negative = same.clone(), ~same
        if self_contrast:
            positive.fill_diagonal_(False)  # anchor i is column i: not its own positive
        loss = info_nce_from_logits(logits, positive, negative)
    return loss * (temperature / base_temperature)
