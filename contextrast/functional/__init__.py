"""Stateless math of Contextrast (paper §3.2–3.3, eq. 1–7), in two parts kept apart:

- :mod:`~contextrast.functional.reference` — the paper as code: one short, readable function
  per equation (eq. 1 :func:`representative_anchors`, the anchor update
  :func:`updated_anchors`, eq. 2 :func:`info_nce`, eq. 3–4 :func:`pixel_anchor_loss` and
  :func:`pa_loss`, eq. 5 :func:`total_loss`, eq. 6 :func:`class_error_maps`, eq. 7
  :func:`distance_map`, BANE's :func:`bane_select` and :func:`hard_negative_mask`, and the
  whole term, :func:`reference.contextrast_loss <.reference.contextrast_loss>`). The oracle.
- :mod:`~contextrast.functional.batched` — the fast path the training step runs: all layers
  at once, BANE on one canvas, written-out gradients, no host synchronisation. Each piece
  names the reference it equals and is tested against it.

:func:`contextrast_loss` (:mod:`~contextrast.functional.loss`) is the whole loss on the fast
path, the one call :class:`~contextrast.ContextrastLoss` makes after its sampler picked on
:func:`layer_targets` and its heads ran (tensors in, nothing called back);
:func:`supervised_contrastive_loss` is the peers' loss. The names below are re-exported here,
so ``from contextrast import functional as CF; CF.distance_transform(...)`` works.
"""

from contextrast.functional import batched, reference
from contextrast.functional.batched import (
    DENSE_EDT_LIMIT,
    Canvas,
    LayerGroup,
    LayerLayout,
    Segments,
    bane_select_labels,
    bound_pixels,
    class_one_hot,
    class_rows,
    constant,
    distance_transform,
    error_distance,
    error_labels,
    fuse_anchors,
    gather_layers,
    group_one_hot,
    info_nce_from_logits,
    layer_layout,
    layer_similarity,
    layer_sums,
    resize_labels,
    sample_pairs,
    sample_per_row,
    segment_sum,
    segments,
    tensor_cache,
)
from contextrast.functional.checks import NonFiniteError, check_labels, compute_dtype
from contextrast.functional.loss import (
    ContextrastTerms,
    LayerTargets,
    contextrast_loss,
    layer_targets,
)
from contextrast.functional.reference import (
    bane_select,
    class_error_maps,
    distance_map,
    info_nce,
    pa_loss,
    pixel_anchor_loss,
    representative_anchors,
    semi_hard_select,
    total_loss,
    updated_anchors,
)
from contextrast.functional.supcon import supervised_contrastive_loss

# hard_negative_mask: the fast (M,)-flat form, with per-layer blocks; the reference one is
# reference.hard_negative_mask.
hard_negative_mask = batched.hard_negative_mask

__all__ = [
    "DENSE_EDT_LIMIT",
    "Canvas",
    "ContextrastTerms",
    "LayerGroup",
    "LayerLayout",
    "LayerTargets",
    "NonFiniteError",
    "Segments",
    "bane_select",
    "bane_select_labels",
    "batched",
    "bound_pixels",
    "check_labels",
    "class_error_maps",
    "class_one_hot",
    "class_rows",
    "compute_dtype",
    "constant",
    "contextrast_loss",
    "distance_map",
    "distance_transform",
    "error_distance",
    "error_labels",
    "fuse_anchors",
    "gather_layers",
    "group_one_hot",
    "hard_negative_mask",
    "info_nce",
    "info_nce_from_logits",
    "layer_layout",
    "layer_similarity",
    "layer_sums",
    "layer_targets",
    "pa_loss",
    "pixel_anchor_loss",
    "reference",
    "representative_anchors",
    "resize_labels",
    "sample_pairs",
    "sample_per_row",
    "segment_sum",
    "segments",
    "semi_hard_select",
    "supervised_contrastive_loss",
    "tensor_cache",
    "total_loss",
    "updated_anchors",
]
