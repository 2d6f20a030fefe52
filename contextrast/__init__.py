"""contextrast: contextual contrastive learning (Contextrast) for semantic segmentation.

The public names load on first use (PEP 562), so that ``import contextrast`` and the command
line's first instant do not import torch: a Ctrl-C while torch loads then ends in one line
(:mod:`contextrast.entry`), not a traceback through the import machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (a module itself where the name is a module)
_EXPORTS = {
    "BaneSampler": "contextrast.contrast",
    "ContextrastLoss": "contextrast.contrast",
    "ContextrastTerms": "contextrast.contrast",
    "MultiScaleCrossScaleLoss": "contextrast.contrast",
    "PixelContrastLoss": "contextrast.contrast",
    "PixelContrastMemory": "contextrast.contrast",
    "ProjectionHead": "contextrast.contrast",
    "RegionContrastLoss": "contextrast.contrast",
    "FeatureTap": "contextrast.models",
    "SegmentationOutput": "contextrast.models",
    "create_model": "contextrast.models",
    "list_models": "contextrast.models",
    "functional": "contextrast.functional",
    "metrics": "contextrast.evaluation.metrics",
}

__all__ = [  # a literal list, so that linters see the names the TYPE_CHECKING block imports
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

if TYPE_CHECKING:  # what static tools and IDEs see
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'contextrast' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if module.__name__.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
