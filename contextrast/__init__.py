"""contextrast: contextual contrastive learning (Contextrast) for semantic segmentation."""

from contextrast import functional, metrics
from contextrast.contrast import (
    BaneSampler,
    ContextrastLoss,
    ContextrastTerms,
    PixelSubsampler,
    ProjectionHead,
)

__version__ = "0.1.0"

__all__ = [
    "BaneSampler",
    "ContextrastLoss",
    "ContextrastTerms",
    "PixelSubsampler",
    "ProjectionHead",
    "__version__",
    "functional",
    "metrics",
]
