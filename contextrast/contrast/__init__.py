"""Contrastive learning: projection heads, samplers and losses; the region losses beside them."""

from contextrast.contrast.losses import ContextrastLoss, ContextrastTerms
from contextrast.contrast.memory import ClassQueue
from contextrast.contrast.peers import (
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
)
from contextrast.contrast.projection import NonFiniteError, ProjectionHead, prepare_features
from contextrast.contrast.region import REGION_LOSSES, RegionLoss
from contextrast.contrast.sampling import (
    BalancedRandomSampler,
    BaneSampler,
    HardAnchorSampler,
    PixelSampler,
    SemiHardSampler,
)

__all__ = [
    "REGION_LOSSES",
    "BalancedRandomSampler",
    "BaneSampler",
    "ClassQueue",
    "ContextrastLoss",
    "ContextrastTerms",
    "HardAnchorSampler",
    "MultiScaleCrossScaleLoss",
    "NonFiniteError",
    "PixelContrastLoss",
    "PixelContrastMemory",
    "PixelSampler",
    "ProjectionHead",
    "RegionContrastLoss",
    "RegionLoss",
    "SemiHardSampler",
    "prepare_features",
]
