"""contextrast: contextual contrastive learning (Contextrast) for semantic segmentation."""

from contextrast import functional
from contextrast.contrast import (
    BaneSampler,
    ContextrastLoss,
    ContextrastTerms,
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    ProjectionHead,
    RegionContrastLoss,
)
from contextrast.evaluation import metrics
from contextrast.models import FeatureTap, SegmentationOutput, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "BaneSampler",
    "ContextrastLoss",
    "ContextrastTerms",
    "FeatureTap",
    "MultiScaleCrossScaleLoss",
    "PixelContrastLoss",
    "PixelContrastMemory",
    "ProjectionHead",
    "RegionContrastLoss",
    "SegmentationOutput",
    "__version__",
    "create_model",
    "functional",
    "list_models",
    "metrics",
]
