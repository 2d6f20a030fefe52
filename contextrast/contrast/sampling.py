"""Samplers pick, losses score: negative and pixel selection, all under ``no_grad``.

One contract, as pytorch-metric-learning's miners share one: every pixel sampler is a
:class:`PixelSampler`, called as ``sampler(labels, pred, **options)`` with the ground truth
first and the prediction at the same resolution second (``None`` for samplers that do not
use it), and returns its pick: a bool mask of ``labels``' shape (the hard-negative
samplers), flat indices (:class:`PixelSubsampler`) or :class:`PixelSamples` (the peers'
anchor samplers). :class:`PerAnchorSampler` picks pairs, not pixels: it thins a loss's
(anchor × pixel) masks. :class:`~contextrast.contrast.losses.ContextrastLoss` works without
a sampler (plain CCL) and accepts any hard-negative sampler.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from contextrast import functional as CF

__all__ = [
    "BalancedRandomSampler",
    "BaneSampler",
    "HardAnchorSampler",
    "PerAnchorSampler",
    "PixelSampler",
    "PixelSamples",
    "PixelSubsampler",
    "SemiHardSampler",
]


class PixelSampler:
    """The sampler contract: ``sampler(labels, pred=None, **options)`` runs :meth:`select`
    under ``no_grad``.

    labels: (B, ...) ground-truth class ids (``ignore_index`` where unlabelled); pred: (B, ...)
    predicted class ids at the same resolution, or None.
    """

    def __call__(self, labels: torch.Tensor, pred: torch.Tensor | None = None, **options):
        with torch.no_grad():
            return self.select(labels, pred, **options)

    def select(self, labels: torch.Tensor, pred: torch.Tensor | None, **options):
        raise NotImplementedError


def _needs_prediction(pred: torch.Tensor | None, name: str) -> torch.Tensor:
    if pred is None:
        raise ValueError(f"{name} picks by the prediction: pass pred (B, ...) next to labels")
    return pred


class BaneSampler(PixelSampler):
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

    def select(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None,
        num_classes: int | None = None,
        validate: bool = True,
        layout: CF.LayerLayout | None = None,
    ) -> torch.Tensor:
        """Select hard negatives.

        Args:
            labels: (B, H, W) ground truth at the layer's resolution; or, with ``layout``,
                the (M,) flat axis of every layer's labels (``functional.gather_layers``),
                selected per layer in one computation.
            pred: predicted class ids of ``labels``' shape and layout.
            num_classes: N (required).
            validate: check the label ranges (``False`` when the caller already did).
            layout: the :class:`~contextrast.functional.LayerLayout` of flat inputs.

        Returns:
            bool of ``labels``' shape: the selected error pixels. Each is a hard negative for
            the anchor of the class it was predicted as (see
            ``functional.hard_negative_mask``).
        """
        pred = _needs_prediction(pred, type(self).__name__)
        if num_classes is None:
            raise ValueError(f"{type(self).__name__} needs num_classes=N")
        if self.ratio == 0:
            return torch.zeros_like(labels, dtype=torch.bool)
        errors = CF.error_labels(pred, labels, num_classes, self.ignore_index, validate)
        scores = self.scores(errors, num_classes, layout)
        blocks = None if layout is None else layout.segments
        return CF.bane_select_labels(scores, errors, num_classes, self.ratio, blocks)

    def scores(
        self, errors: torch.Tensor, num_classes: int, layout: CF.LayerLayout | None = None
    ) -> torch.Tensor:
        """errors: error labels (N: none) as :meth:`select` takes labels -> ranking keys of
        the same shape, smaller first: the distance of each error pixel to the edge of its
        class's error region (eq. 7)."""
        return CF.error_distance(errors, num_classes, layout)


class PixelSubsampler(PixelSampler):
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

    def select(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None = None,
        priority: torch.Tensor | None = None,
        blocks: CF.Segments | None = None,
    ) -> torch.Tensor | None:
        """labels: (M,); pred: unused; priority: optional (M,) bool, kept first; blocks:
        optional :class:`~contextrast.functional.Segments` of the M pixels (the layers), each
        bounded on its own.

        Returns (M',) indices, block after block, each block's at most ``max_pixels``; or None
        when no block exceeds the bound (= all). A block with more pixels but at most
        ``max_pixels`` labelled ones keeps all of those (and some unlabelled ones, which
        score nothing): the number of labelled pixels is never read back to the host.
        """
        counts = (labels.numel(),) if blocks is None else blocks.counts
        if self.max_pixels is None or max(counts) <= self.max_pixels:
            return None
        score = torch.rand(labels.shape, device=labels.device)
        if priority is not None:
            score = score + priority.to(score.dtype)
        score = score.masked_fill(labels == self.ignore_index, -1.0)
        keep, start = [], 0
        for count in counts:
            if count <= self.max_pixels:
                keep.append(torch.arange(start, start + count, device=labels.device))
            else:
                top = torch.topk(score[start : start + count], self.max_pixels, sorted=False)
                keep.append(top.indices + start)
            start += count
        return torch.cat(keep)


class PerAnchorSampler:
    """Bound each anchor's positives and negatives by uniform random sampling.

    Per anchor (row), at most ``max_positives`` of its positive pixels and at most
    ``max_negatives`` of its negatives are kept, and, separately, at most ``max_negatives`` of
    its extra (hard) negatives. It evens out the weight of large and small classes in the
    loss (a class with 10⁴ pixels and one with 10 then face denominators of similar size).

    Args:
        max_positives, max_negatives: the bounds; ``None`` keeps every pixel of that kind.
    """

    def __init__(self, max_positives: int | None = None, max_negatives: int | None = None):
        for name, value in (("max_positives", max_positives), ("max_negatives", max_negatives)):
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.max_positives = max_positives
        self.max_negatives = max_negatives

    @property
    def active(self) -> bool:
        return self.max_positives is not None or self.max_negatives is not None

    @torch.no_grad()
    def __call__(
        self,
        positive: torch.Tensor,
        negative: torch.Tensor,
        extra_negative: torch.Tensor | None = None,
        blocks: CF.Segments | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """positive, negative, extra_negative: (N, M) bool candidate masks; returns subsets.
        With ``blocks`` (the layers' pixels), the bounds hold per anchor and block."""
        masks = [positive, negative] + ([] if extra_negative is None else [extra_negative])
        bounds = [self.max_positives] + [self.max_negatives] * (len(masks) - 1)
        # Masks with the same bound are sampled in one call (rows stacked, each independent).
        out: list[torch.Tensor | None] = list(masks)
        for bound in dict.fromkeys(b for b in bounds if b is not None):  # a fixed order
            chosen = [i for i, b in enumerate(bounds) if b == bound]
            rows = positive.shape[0]
            stacked = (
                masks[chosen[0]] if len(chosen) == 1 else torch.cat([masks[i] for i in chosen])
            )
            picked = CF.sample_per_row(stacked, bound, blocks)
            parts = [picked] if len(chosen) == 1 else picked.view(len(chosen), rows, -1).unbind(0)
            for i, part in zip(chosen, parts):
                out[i] = part
        return out[0], out[1], out[2] if extra_negative is not None else None


class SemiHardSampler(BaneSampler):
    """Semi-hard negatives (Table 6 ablation): the same share of error pixels per class as
    BANE, chosen uniformly at random instead of nearest to the edge."""

    def scores(
        self, errors: torch.Tensor, num_classes: int, layout: CF.LayerLayout | None = None
    ) -> torch.Tensor:
        return torch.rand(errors.shape, device=errors.device)


class PixelSamples(NamedTuple):
    """Sampled pixels, one row per (image, class) pair.

    batch: (A,) image of each row; pixels: (A, V) flat pixel indices in that image;
    classes: (A,) the class of each row.
    """

    batch: torch.Tensor
    pixels: torch.Tensor
    classes: torch.Tensor

    def gather(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embeddings: (B, D, P) -> (features (A·V, D), labels (A·V,)), with gradient."""
        a, v = self.pixels.shape
        rows = self.batch.unsqueeze(1).expand(a, v)  # (A, V)
        features = embeddings[rows.reshape(-1), :, self.pixels.reshape(-1)]  # (A·V, D)
        return features, self.classes.repeat_interleave(v)


def _empty_samples(device: torch.device) -> PixelSamples:
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return PixelSamples(empty, empty.view(0, 0), empty)


def _pick(candidates: torch.Tensor, count: int) -> torch.Tensor:
    return candidates[torch.randperm(candidates.numel(), device=candidates.device)[:count]]


class HardAnchorSampler(PixelSampler):
    """Pixel contrast's sampling (Wang et al.): per image, the classes with more than
    ``max_views`` pixels qualify; each gets ``min(max_samples // #qualifying, max_views)``
    views, half "hard" (predicted wrongly) and half "easy" (predicted rightly), filling from
    the other kind when one is short."""

    def __init__(self, max_samples: int = 1024, max_views: int = 100, ignore_index: int = 255):
        if max_samples < 1 or max_views < 2:
            raise ValueError(
                f"max_samples >= 1 and max_views >= 2 needed, got {max_samples}, {max_views}"
            )
        self.max_samples, self.max_views, self.ignore_index = max_samples, max_views, ignore_index

    def select(self, labels: torch.Tensor, pred: torch.Tensor | None) -> PixelSamples:
        """labels, pred: (B, P) at the embeddings' resolution."""
        pred = _needs_prediction(pred, type(self).__name__)
        pairs = []
        for b in range(labels.shape[0]):
            values, counts = torch.unique(labels[b], return_counts=True)
            for c, n in zip(values.tolist(), counts.tolist()):
                if c != self.ignore_index and n > self.max_views:
                    pairs.append((b, c))
        if not pairs:
            return _empty_samples(labels.device)
        views = min(self.max_samples // len(pairs), self.max_views)
        if views < 2:
            return _empty_samples(labels.device)
        rows = []
        for b, c in pairs:
            hard = torch.nonzero((labels[b] == c) & (pred[b] != c)).squeeze(1)
            easy = torch.nonzero((labels[b] == c) & (pred[b] == c)).squeeze(1)
            n_hard = min(hard.numel(), max(views // 2, views - easy.numel()))
            rows.append(torch.cat([_pick(hard, n_hard), _pick(easy, views - n_hard)]))
        device = labels.device
        return PixelSamples(
            torch.tensor([b for b, _ in pairs], device=device),
            torch.stack(rows),
            torch.tensor([c for _, c in pairs], device=device),
        )


class BalancedRandomSampler(PixelSampler):
    """Multi-/cross-scale contrast's sampling (Pissas et al.): (image, class) pairs with at
    least ``min_pixels`` pixels qualify; every pair gets the same number of views — the
    smallest pair's count, capped at ``max_views`` and ``max_samples // #pairs`` — drawn
    uniformly at random."""

    def __init__(
        self,
        min_pixels: int = 5,
        max_views: int = 2500,
        max_samples: int = 10000,
        ignore_index: int = 255,
    ):
        self.min_pixels, self.max_views, self.max_samples = min_pixels, max_views, max_samples
        self.ignore_index = ignore_index

    def select(self, labels: torch.Tensor, pred: torch.Tensor | None = None) -> PixelSamples:
        """labels: (B, P); pred: unused (the pick is uniform within each class)."""
        pairs, smallest = [], None
        for b in range(labels.shape[0]):
            values, counts = torch.unique(labels[b], return_counts=True)
            for c, n in zip(values.tolist(), counts.tolist()):
                if c != self.ignore_index and n >= self.min_pixels:
                    pairs.append((b, c))
                    smallest = n if smallest is None else min(smallest, n)
        if not pairs:
            return _empty_samples(labels.device)
        views = max(1, min(smallest, self.max_views, self.max_samples // len(pairs)))
        rows = [_pick(torch.nonzero(labels[b] == c).squeeze(1), views) for b, c in pairs]
        device = labels.device
        return PixelSamples(
            torch.tensor([b for b, _ in pairs], device=device),
            torch.stack(rows),
            torch.tensor([c for _, c in pairs], device=device),
        )
