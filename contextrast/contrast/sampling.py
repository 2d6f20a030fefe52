"""Samplers pick, losses score: one contract for every pixel sampler, run under ``no_grad``.

As pytorch-metric-learning's miners share one contract, every sampler here is a
:class:`PixelSampler`: ``sampler(labels, pred, num_classes=N, layout=None)`` with the ground
truth first and the prediction at the same resolution second, returning one type — a bool
mask of ``labels``' shape, True on the picked pixels. A loss scores what was picked and works
without a sampler. :class:`~contextrast.contrast.losses.ContextrastLoss` takes any
:class:`PixelSampler` instance as its hard-negative sampler (``negatives=``): a picked pixel
of class n predicted as m becomes a hard negative of anchor m.

The bounds on how many pixels and pairs enter a loss (``max_pixels``, ``max_positives``,
``max_negatives``) are options of the loss, not samplers: ``functional.batched.bound_pixels``
and ``functional.batched.sample_pairs``.
"""

from __future__ import annotations

import torch

from contextrast import functional as CF
from contextrast.functional.checks import check_fraction

__all__ = [
    "BalancedRandomSampler",
    "BaneSampler",
    "HardAnchorSampler",
    "PixelSampler",
    "SemiHardSampler",
]


class PixelSampler:
    """The sampler contract: ``sampler(labels, pred, num_classes=N, layout=None)`` runs
    :meth:`select` under ``no_grad`` and returns its bool mask.

    Implement :meth:`select`. Arguments:

    - labels: ground-truth class ids (``ignore_index`` where unlabelled), (B, H, W) or (B, P)
      for one map, or the (M,) flat axis of every layer (``functional.layer_targets``) with
      ``layout``, the :class:`~contextrast.functional.batched.LayerLayout` that says which
      pixel is whose (the layers' pixel counts: ``layout.segments.counts``).
    - pred: predicted class ids of the same shape, or None for samplers that do not use it.
    - num_classes: N.

    Returns: bool of ``labels``' shape.

    A sampler that picks per image (``per_image = True``: its :meth:`select` reads (B, P)
    maps, as the peers' do) gets the flat axis one layer at a time, as (B, h_i·w_i) maps,
    and its picks are laid back on the axis: every sampler serves every loss that takes one.
    """

    #: select reads (B, P) maps only: the flat axis is split into them (see above)
    per_image = False
    #: every pick is an error pixel (labelled, predicted wrongly), as BANE's: a loss that
    #: makes picks hard negatives need not restrict them
    picks_errors = False

    def __call__(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None = None,
        num_classes: int | None = None,
        layout: CF.batched.LayerLayout | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            if layout is not None and self.per_image:
                picked = self._per_layer(labels, pred, num_classes, layout)
            else:
                picked = self.select(labels, pred, num_classes=num_classes, layout=layout)
        if not isinstance(picked, torch.Tensor) or picked.dtype != torch.bool:
            raise TypeError(
                f"{type(self).__name__}.select must return a bool tensor of labels' shape "
                f"{tuple(labels.shape)}, got {getattr(picked, 'dtype', type(picked))}"
            )
        if picked.shape != labels.shape:
            raise ValueError(
                f"{type(self).__name__}.select returned shape {tuple(picked.shape)}; the "
                f"contract is a mask of labels' shape {tuple(labels.shape)}"
            )
        return picked

    def _per_layer(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None,
        num_classes: int | None,
        layout: CF.batched.LayerLayout,
    ) -> torch.Tensor:
        """:meth:`select` on each layer's block of the (M,) flat axis as (B, h·w) maps."""
        if labels.dim() != 1 or labels.shape[0] != sum(layout.segments.counts):
            raise ValueError(
                f"{type(self).__name__}: with a layout, labels must be the (M,) flat axis of "
                f"{sum(layout.segments.counts)} pixels, got shape {tuple(labels.shape)}"
            )
        if pred is not None and (not torch.is_tensor(pred) or pred.shape != labels.shape):
            got = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
            raise ValueError(
                f"{type(self).__name__}: pred must have labels' shape {tuple(labels.shape)} "
                f"(the flat axis), got {got}"
            )
        counts = layout.segments.counts
        preds = [None] * len(counts) if pred is None else pred.split(counts)
        picked = []
        for block, layer_pred, (h, w) in zip(labels.split(counts), preds, layout.sizes):
            maps = block.view(layout.batch, h * w)  # (B, P_i): the axis is (b, y, x) per layer
            pick = self.select(
                maps, None if layer_pred is None else layer_pred.view_as(maps), num_classes
            )
            picked.append(pick.reshape(-1))  # (B·P_i,)
        return torch.cat(picked)

    def select(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None,
        num_classes: int | None = None,
        layout: CF.batched.LayerLayout | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} must implement select(labels, pred, num_classes, layout)"
        )


def _per_image(labels: torch.Tensor, name: str) -> None:
    """The peers' samplers pick per image on (B, P) maps (the flat axis reaches them split
    into such maps: :meth:`PixelSampler._per_layer`)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError(
            f"{name} picks per image on (B, P) labels, or on a loss's flat axis with its "
            f"layout; got shape {tuple(getattr(labels, 'shape', ()))}"
        )


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
        validate: check the label and prediction values on each call (two host
            synchronisations); the loss's own sampler skips it (the loss checks once).
    """

    picks_errors = True

    def __init__(self, ratio: float = 0.5, ignore_index: int = 255, validate: bool = True):
        self.ratio = check_fraction("bane ratio", ratio)
        self.ignore_index = ignore_index
        self.validate = validate

    def select(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None,
        num_classes: int | None = None,
        layout: CF.batched.LayerLayout | None = None,
    ) -> torch.Tensor:
        """Select hard negatives (equals ``functional.reference.bane_select`` of the error
        maps, per layer with ``layout``).

        Args:
            labels: (B, H, W) ground truth at the layer's resolution; or, with ``layout``,
                the (M,) flat axis of every layer's labels (``functional.batched.gather_layers``),
                selected per layer in one computation.
            pred: predicted class ids of ``labels``' shape and layout.
            num_classes: N (required).
            layout: the :class:`~contextrast.functional.batched.LayerLayout` of flat inputs.

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
        errors = CF.batched.error_labels(
            pred, labels, num_classes, self.ignore_index, self.validate
        )
        scores = self.scores(errors, num_classes, layout)
        blocks = None if layout is None else layout.segments
        return CF.batched.bane_select_labels(scores, errors, num_classes, self.ratio, blocks)

    def scores(
        self, errors: torch.Tensor, num_classes: int, layout: CF.batched.LayerLayout | None = None
    ) -> torch.Tensor:
        """errors: error labels (N: none) as :meth:`select` takes labels -> ranking keys of
        the same shape, smaller first: the distance of each error pixel to the edge of its
        class's error region (eq. 7)."""
        return CF.batched.error_distance(errors, num_classes, layout)


class SemiHardSampler(BaneSampler):
    """Semi-hard negatives (Table 6 ablation): the same share of error pixels per class as
    BANE, chosen uniformly at random instead of nearest to the edge."""

    def scores(
        self, errors: torch.Tensor, num_classes: int, layout: CF.batched.LayerLayout | None = None
    ) -> torch.Tensor:
        return torch.rand(errors.shape, device=errors.device)


def _count(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _pick(candidates: torch.Tensor, count: int) -> torch.Tensor:
    return candidates[torch.randperm(candidates.numel(), device=candidates.device)[:count]]


class HardAnchorSampler(PixelSampler):
    """Pixel contrast's sampling (Wang et al.): per image, the classes with more than
    ``max_views`` pixels qualify; each gets ``min(max_samples // #qualifying, max_views)``
    views, half "hard" (predicted wrongly) and half "easy" (predicted rightly), filling from
    the other kind when one is short."""

    per_image = True

    def __init__(self, max_samples: int = 1024, max_views: int = 100, ignore_index: int = 255):
        if not (_count(max_samples, 1) and _count(max_views, 2)):
            raise ValueError(
                f"max_samples >= 1 and max_views >= 2 (ints) needed, got {max_samples!r}, "
                f"{max_views!r}"
            )
        self.max_samples, self.max_views, self.ignore_index = max_samples, max_views, ignore_index

    def select(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None,
        num_classes: int | None = None,
        layout: CF.batched.LayerLayout | None = None,
    ) -> torch.Tensor:
        """labels, pred: (B, P) at the embeddings' resolution -> (B, P) bool."""
        _per_image(labels, type(self).__name__)
        pred = _needs_prediction(pred, type(self).__name__)
        if pred.shape != labels.shape:
            raise ValueError(
                f"{type(self).__name__}: pred has shape {tuple(pred.shape)}, labels "
                f"{tuple(labels.shape)}; pass both at the embeddings' resolution"
            )
        pairs = []
        for b in range(labels.shape[0]):
            values, counts = torch.unique(labels[b], return_counts=True)
            for c, n in zip(values.tolist(), counts.tolist()):
                if c != self.ignore_index and n > self.max_views:
                    pairs.append((b, c))
        picked = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
        views = min(self.max_samples // len(pairs), self.max_views) if pairs else 0
        if views < 2:
            return picked
        for b, c in pairs:
            hard = torch.nonzero((labels[b] == c) & (pred[b] != c)).squeeze(1)
            easy = torch.nonzero((labels[b] == c) & (pred[b] == c)).squeeze(1)
            n_hard = min(hard.numel(), max(views // 2, views - easy.numel()))
            picked[b, _pick(hard, n_hard)] = True
            picked[b, _pick(easy, views - n_hard)] = True
        return picked


class BalancedRandomSampler(PixelSampler):
    """Multi-/cross-scale contrast's sampling (Pissas et al.): (image, class) pairs with at
    least ``min_pixels`` pixels qualify; every pair gets the same number of views — the
    smallest pair's count, capped at ``max_views`` and ``max_samples // #pairs`` — drawn
    uniformly at random."""

    per_image = True

    def __init__(
        self,
        min_pixels: int = 5,
        max_views: int = 2500,
        max_samples: int = 10000,
        ignore_index: int = 255,
    ):
        if not (_count(min_pixels, 1) and _count(max_views, 1) and _count(max_samples, 1)):
            raise ValueError(
                f"min_pixels, max_views and max_samples must be ints >= 1, got {min_pixels!r}, "
                f"{max_views!r}, {max_samples!r}"
            )
        self.min_pixels, self.max_views, self.max_samples = min_pixels, max_views, max_samples
        self.ignore_index = ignore_index

    def select(
        self,
        labels: torch.Tensor,
        pred: torch.Tensor | None = None,
        num_classes: int | None = None,
        layout: CF.batched.LayerLayout | None = None,
    ) -> torch.Tensor:
        """labels: (B, P) -> (B, P) bool; pred: unused (the pick is uniform in each class)."""
        _per_image(labels, type(self).__name__)
        pairs, smallest = [], None
        for b in range(labels.shape[0]):
            values, counts = torch.unique(labels[b], return_counts=True)
            for c, n in zip(values.tolist(), counts.tolist()):
                if c != self.ignore_index and n >= self.min_pixels:
                    pairs.append((b, c))
                    smallest = n if smallest is None else min(smallest, n)
        picked = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
        if not pairs:
            return picked
        views = max(1, min(smallest, self.max_views, self.max_samples // len(pairs)))
        for b, c in pairs:
            picked[b, _pick(torch.nonzero(labels[b] == c).squeeze(1), views)] = True
        return picked
