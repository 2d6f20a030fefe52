"""Region losses on the logits: what a practitioner adds to CE instead of a contrastive term.

Lovász-softmax (Berman et al., CVPR 2018), soft Dice (Milletari et al., 3DV 2016) and soft
Jaccard, each as ``segmentation_models_pytorch`` implements it (its ``losses`` package, kept
by its maintainers and used by many); this module only wires them into the training loss as
``CE + weight · region`` (nnU-Net's CE + Dice is 1 : 1, hence ``weight=1``) and makes them
refuse bad input in one line.

What each computes on a batch (softmax probabilities p, one-hot labels y, labelled pixels only):

- ``lovasz``: the Lovász extension of the Jaccard loss of each class present in the batch,
  over all the batch's pixels at once (smp's ``per_image=False``), averaged over those
  classes.
- ``dice``: per class c, 1 − 2·Σ p_c y_c / (Σ p_c + Σ y_c), averaged over all N classes with
  the classes absent from the batch counted as 0.
- ``jaccard``: the same with Σ p_c y_c / (Σ p_c + Σ y_c − Σ p_c y_c).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["REGION_LOSSES", "RegionLoss"]

#: ``name`` → (smp class name, the extra keyword arguments smp needs for it, what it is)
REGION_LOSSES: dict[str, tuple[str, dict, str]] = {
    "lovasz": ("LovaszLoss", {"per_image": False}, "Lovász-softmax, Berman et al. CVPR18"),
    "dice": ("DiceLoss", {}, "soft Dice, Milletari et al. 3DV16"),
    "jaccard": ("JaccardLoss", {}, "soft Jaccard (IoU) loss"),
}


def _smp_losses():
    try:
        from segmentation_models_pytorch import losses
    except ImportError:
        raise ImportError(
            "the region losses (loss.region.name) are segmentation_models_pytorch's: "
            "pip install 'contextrast[region]'"
        ) from None
    return losses


class RegionLoss(nn.Module):
    """``weight ·`` a region loss of the softmax of the logits, ignoring ``ignore_index``.

    Args:
        name: ``"lovasz"``, ``"dice"``, ``"jaccard"``, or ``"none"`` (the module returns 0).
        weight: λ in ``CE + λ · region``.
        ignore_index: the label of pixels that do not count.
    """

    def __init__(
        self,
        name: Literal["none", "lovasz", "dice", "jaccard"] = "none",
        weight: float = 1.0,
        ignore_index: int = 255,
    ):
        super().__init__()
        if name != "none" and name not in REGION_LOSSES:
            raise ValueError(f"name: unknown region loss {name!r}; choose from {self.choices()}")
        if not (
            isinstance(weight, (int, float))
            and not isinstance(weight, bool)
            and math.isfinite(weight)
            and weight >= 0
        ):
            raise ValueError(f"weight: must be a finite number >= 0, got {weight!r}")
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            raise ValueError(f"ignore_index: must be an int, got {ignore_index!r}")
        self.name, self.weight, self.ignore_index = name, float(weight), ignore_index
        self.loss: nn.Module | None = None
        if name != "none":
            cls_name, kwargs, _ = REGION_LOSSES[name]
            cls = getattr(_smp_losses(), cls_name)
            self.loss = cls("multiclass", ignore_index=ignore_index, **kwargs)

    @staticmethod
    def choices() -> list[str]:
        return ["none", *REGION_LOSSES]

    @property
    def active(self) -> bool:
        return self.loss is not None and self.weight > 0

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, validate: bool = True
    ) -> torch.Tensor:
        """logits: (B, N, H, W) at the labels' size; target: (B, H, W) integer class indices
        or ``ignore_index``. Returns the weighted loss, a scalar (0 with a graph when inactive
        or when no pixel is labelled).

        ``validate`` checks that every label is in [0, N) or ``ignore_index`` (one host
        sync); the trainer, which checks every label file before training, turns it off.
        """
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"logits must be (B, N, H, W) and target (B, H, W) of the same B, H, W; got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target: must hold integer class indices, got {target.dtype}")
        classes = logits.shape[1]
        if classes < 2:
            raise ValueError(f"logits: a region loss needs N >= 2 classes, got {classes}")
        if validate and target.numel():
            outside = (target != self.ignore_index) & ((target < 0) | (target >= classes))
            if bool(outside.any()):
                bad = int(target[outside][0])
                raise ValueError(
                    f"target: labels must be in [0, {classes}) or ignore_index "
                    f"{self.ignore_index}; found {bad}"
                )
        if not self.active or target.numel() == 0:
            return logits.sum() * 0.0
        # smp's Lovász sorts and sums in the logits' dtype: float32 under autocast.
        value = self.loss(logits.float(), target.long())
        # smp returns a Python 0 / empty tensor on batches without labelled pixels.
        if not torch.is_tensor(value) or value.numel() != 1:
            return logits.sum() * 0.0
        return self.weight * value.reshape(())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"
