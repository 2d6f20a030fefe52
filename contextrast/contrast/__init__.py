"""Contrastive learning: projection heads, samplers and losses."""

from contextrast.contrast.losses import ContextrastLoss, ContextrastTerms
from contextrast.contrast.projection import ProjectionHead
from contextrast.contrast.sampling import BaneSampler, PixelSubsampler

__all__ = [
    "BaneSampler",
    "ContextrastLoss",
    "ContextrastTerms",
    "PixelSubsampler",
    "ProjectionHead",
]
