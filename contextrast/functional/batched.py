"""The fast path: Contextrast's equations batched over every layer, with written-out gradients.

What :class:`~contextrast.ContextrastLoss` runs. Each piece computes what a function of
:mod:`contextrast.functional.reference` computes (its docstring names which) and is tested
against it: every layer's pixels on one flat axis (:class:`LayerLayout`), BANE's distance
transform of all layers on one canvas (:class:`Canvas`), three autograd Functions whose
gradients are closed forms (double backward is refused: their backward is not itself
differentiable), cached index tensors and 0-dim constants (:func:`tensor_cache`: a caller
that edits one in place gets it rebuilt), and no host synchronisation.

Every function is vectorised (no Python loop over pixels) and keeps its tensors on the device
of its inputs; the random ones draw from the global RNG of that device. Reduced-precision
inputs (bfloat16, float16) are computed in float32 with autocast disabled: log-sum-exp over
thousands of pixels at a temperature of 0.01 overflows half-precision ranges.

The pieces live in files named for what they hold: ``_layouts`` (the flat axis of every
layer), ``_anchors`` (eq. 1's class sums, the fusion, the similarities), ``_info_nce``,
``_sampling`` (BANE's selection, the hard-negative mask, the random bounds), ``_distance``
(error labels and the exact Euclidean distance transform) and ``_cache``. This module is
their one internal namespace (``from contextrast.functional import batched as B``); the
public API of :mod:`contextrast.functional` is the references and its one entry point.
"""

from __future__ import annotations

from contextrast.functional._anchors import (
    LayerGroup,
    fuse_anchors,
    group_one_hot,
    group_row_offsets,
    layer_similarity,
    layer_sums,
)
from contextrast.functional._cache import constant, tensor_cache
from contextrast.functional._distance import (
    DENSE_EDT_LIMIT,
    distance_transform,
    error_distance,
    error_labels,
)
from contextrast.functional._info_nce import info_nce_across_processes, info_nce_from_logits
from contextrast.functional._layouts import (
    Canvas,
    LayerLayout,
    Segments,
    class_one_hot,
    class_rows,
    gather_layers,
    layer_layout,
    resize_labels,
    segment_sum,
    segments,
)
from contextrast.functional._sampling import (
    bane_select_labels,
    bound_pixels,
    hard_negative_mask,
    sample_pairs,
    sample_per_row,
)
from contextrast.functional._sparse import SparsePairs, sparse_info_nce, sparse_pairs

__all__ = [
    "DENSE_EDT_LIMIT",
    "Canvas",
    "LayerGroup",
    "LayerLayout",
    "Segments",
    "SparsePairs",
    "bane_select_labels",
    "bound_pixels",
    "class_one_hot",
    "class_rows",
    "constant",
    "distance_transform",
    "error_distance",
    "error_labels",
    "fuse_anchors",
    "gather_layers",
    "group_one_hot",
    "group_row_offsets",
    "hard_negative_mask",
    "info_nce_across_processes",
    "info_nce_from_logits",
    "layer_layout",
    "layer_similarity",
    "layer_sums",
    "resize_labels",
    "sample_pairs",
    "sample_per_row",
    "segment_sum",
    "segments",
    "sparse_info_nce",
    "sparse_pairs",
    "tensor_cache",
]
