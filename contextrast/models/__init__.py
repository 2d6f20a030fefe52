"""Segmentation models exposing the multi-scale encoder features that the losses attach to."""

from contextrast.models.encoders import TimmEncoder, load_state_dict_file
from contextrast.models.factory import GENERIC_PREFIX, MODELS, create_model, list_models
from contextrast.models.heads import ASPPHead, FCNHead, HRNetV2Head, OCRHead
from contextrast.models.segmentor import (
    EXPORT_FORMATS,
    ONNX_OPSET,
    PaddedInference,
    SegmentationInference,
    SegmentationOutput,
    Segmentor,
    convert_sync_batchnorm,
    export_format,
    export_inference,
    export_onnx,
    writable_path,
)
from contextrast.models.tap import FeatureTap, preset_layers

__all__ = [
    "EXPORT_FORMATS",
    "GENERIC_PREFIX",
    "MODELS",
    "ONNX_OPSET",
    "ASPPHead",
    "FCNHead",
    "FeatureTap",
    "HRNetV2Head",
    "OCRHead",
    "PaddedInference",
    "SegmentationInference",
    "SegmentationOutput",
    "Segmentor",
    "TimmEncoder",
    "convert_sync_batchnorm",
    "create_model",
    "export_format",
    "export_inference",
    "export_onnx",
    "list_models",
    "load_state_dict_file",
    "preset_layers",
    "writable_path",
]
