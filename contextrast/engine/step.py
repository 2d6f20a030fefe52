"""One training step's loss: CE (+ auxiliary CE) + a region term + the contrastive term, as
one module."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contextrast.contrast.region import RegionLoss
from contextrast.models import Segmentor

__all__ = ["LossTerms", "TrainingModule"]


class LossTerms(NamedTuple):
    """total: the optimised scalar; ce, aux, contrast: its (unweighted-by-switch) parts;
    region: the weighted region term (0 without one); unlabelled: 1.0 when the batch (this
    rank's share) has no labelled pixel, else 0.0."""

    total: torch.Tensor
    ce: torch.Tensor
    aux: torch.Tensor
    contrast: torch.Tensor
    region: torch.Tensor
    unlabelled: torch.Tensor


class TrainingModule(nn.Module):
    """Model and contrastive loss in one module, so that DDP averages the gradients of the
    projection heads as well as the model's.

    Args:
        model: the segmentor.
        contrast: a contrastive loss module or None (CE baseline).
        aux_weight: weight of the auxiliary CE.
        region: a :class:`~contextrast.contrast.region.RegionLoss` on the main logits, or
            None.
    """

    def __init__(
        self,
        model: Segmentor,
        contrast: nn.Module | None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        region: RegionLoss | None = None,
    ):
        super().__init__()
        self.model = model
        self.contrast = contrast
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.region = region if region is not None and region.active else None
        self._takes_step = (
            contrast is not None and "step" in inspect.signature(contrast.forward).parameters
        )

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor):
        """Mean CE over the labelled pixels; exactly 0 (with a graph) when there are none.

        logits: (B, N, H, W) at the labels' size; target: (B, H, W); labelled: () their count.
        """
        # "mean" would divide by zero on a crop without labels (sky-only, ignore borders).
        total = F.cross_entropy(
            logits.float(), target, ignore_index=self.ignore_index, reduction="sum"
        )
        return total / labelled.clamp(min=1)

    def forward(
        self,
        images: torch.Tensor,
        target: torch.Tensor,
        contrast_scale: float = 1.0,
        step: int | None = None,
    ) -> LossTerms:
        """images: (B, 3, H, W); target: (B, H, W). ``contrast_scale`` 0 keeps the term in the
        graph with zero weight (warm-up), identically on one process and on many. ``step``:
        optimiser steps taken so far, for a contrastive loss that takes it (a schedule)."""
        out = self.model(images)
        size = target.shape[-2:]
        labelled = (target != self.ignore_index).sum()
        logits = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)
        ce = self._ce(logits, target, labelled)
        zero = ce.new_zeros(())
        aux = zero
        if out.aux_logits is not None:
            aux_logits = F.interpolate(
                out.aux_logits, size=size, mode="bilinear", align_corners=False
            )
            aux = self._ce(aux_logits, target, labelled)
        # Labels were checked before training (data.check_labels): no host sync per step.
        region = self.region(logits, target, validate=False) if self.region is not None else zero
        contrast = zero
        if self.contrast is not None:
            timed = {"step": step} if self._takes_step else {}
            contrast = self.contrast(out.features, out.logits, target, **timed)
        total = ce + self.aux_weight * aux + region + contrast_scale * contrast
        unlabelled = (labelled == 0).to(ce.dtype)
        return LossTerms(
            total, ce.detach(), aux.detach(), contrast.detach(), region.detach(), unlabelled
        )
