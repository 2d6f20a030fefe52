"""Public metrics API: ``contextrast.metrics`` (implemented in :mod:`contextrast.evaluation`)."""

from contextrast.evaluation.metrics import (
    IoU,
    boundary_band,
    boundary_confusion_matrix,
    boundary_distance,
    confusion_matrix,
    feature_metrics,
    mean_iou,
    pixel_accuracy,
)

__all__ = [
    "IoU",
    "boundary_band",
    "boundary_confusion_matrix",
    "boundary_distance",
    "confusion_matrix",
    "feature_metrics",
    "mean_iou",
    "pixel_accuracy",
]
