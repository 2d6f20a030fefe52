"""Samplers pick, losses score: negative and pixel selection, all under ``no_grad``.

A sampler returns masks or indices; :class:`~contextrast.contrast.losses.ContextrastLoss`
works without one (plain CCL) and accepts any of them.
"""

from __future__ import annotations

import torch

from contextrast import functional as CF

__all__ = ["BaneSampler", "PixelSubsampler"]


class BaneSampler:
    """Boundary-aware negative (BANE) sampling, paper §3.3.

    Builds class-wise error maps from the prediction (eq. 6), their exact distance transform
    (eq. 7) and keeps, per class, the ``ratio`` share of error pixels nearest to the edge of
    their error region.

    Args:
        ratio: K in [0, 1] (paper: 0.5).
        ignore_index: label of unlabelled pixels.
    """

    def __init__(self, ratio: float = 0.5, ignore_index: int = 255):
        if not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0):
            raise ValueError(f"bane ratio must be a number in [0, 1], got {ratio!r}")
        self.ratio = float(ratio)
        self.ignore_index = ignore_index

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Select hard negatives.

        Args:
            pred: (B, H, W) predicted class ids at the layer's resolution.
            target: (B, H, W) ground truth at the same resolution.
            num_classes: N.

        Returns:
            (B, H, W) bool: the selected error pixels. Each is a hard negative for the anchor
            of the class it was predicted as (see ``functional.hard_negative_mask``).
        """
        if self.ratio == 0:
            return torch.zeros_like(target, dtype=torch.bool)
        errors = CF.class_error_maps(pred, target, num_classes, self.ignore_index)
        distance = CF.distance_transform(errors)
        # Each pixel has one GT class, so at most one of the N maps selects it.
        return CF.bane_select(distance, errors, self.ratio).any(dim=1)


class PixelSubsampler:
    """Bound the pixels that enter the loss of one layer.

    Keeps every prioritised pixel (e.g. the BANE hard negatives) first, then a uniform random
    share of the other labelled pixels, up to ``max_pixels``. Anchors are still computed from
    all pixels; only the N × M similarity matrix and its gradient are bounded.

    Args:
        max_pixels: the bound M; ``None`` keeps every pixel.
        ignore_index: label of unlabelled pixels (never sampled).
    """

    def __init__(self, max_pixels: int | None = None, ignore_index: int = 255):
        if max_pixels is not None and not (isinstance(max_pixels, int) and max_pixels > 0):
            raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
        self.max_pixels = max_pixels
        self.ignore_index = ignore_index

    @torch.no_grad()
    def __call__(
        self, labels: torch.Tensor, priority: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """labels: (M,); priority: optional (M,) bool. Returns (M',) indices or None (= all)."""
        valid = labels != self.ignore_index
        if self.max_pixels is None or int(valid.sum()) <= self.max_pixels:
            return None
        score = torch.rand(labels.shape, device=labels.device)
        if priority is not None:
            score = score + priority.to(score.dtype)
        score = score.masked_fill(~valid, -1.0)
        return torch.topk(score, self.max_pixels, sorted=False).indices
