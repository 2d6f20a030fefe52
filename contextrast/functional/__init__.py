"""Stateless math of Contextrast (paper §3.2–3.3, eq. 1–7) and of Contextrast++: the
references and one entry point.

- :mod:`~contextrast.functional.reference` — the paper as code: one short, readable function
  per equation (eq. 1 :func:`representative_anchors`, the anchor update
  :func:`updated_anchors`, eq. 2 :func:`info_nce`, eq. 3–4 :func:`pixel_anchor_loss` and
  :func:`pa_loss`, eq. 5 :func:`total_loss`, eq. 6 :func:`class_error_maps`, eq. 7
  :func:`distance_map`, BANE's :func:`bane_select` and :func:`hard_negative_mask`, the whole
  term :func:`reference.contextrast_loss <.reference.contextrast_loss>`; Contextrast++'s
  :func:`~.reference.adaptive_updated_anchors`, :func:`~.reference.class_prioritized_anchors`
  and :func:`~.reference.anchor_anchor_loss`). The oracle; re-exported here.
- :func:`contextrast_loss` — the whole loss on the fast path, on tensors, one way:
  :func:`layer_targets` lays the labels out, a sampler picks on them, the heads run, then one
  call (what :class:`~contextrast.ContextrastLoss` does). It equals the reference with
  sampling off.

The fast machinery is internal, in files named for what they hold (``_layouts``,
``_anchors``, ``_info_nce``, ``_sampling``, ``_distance``, ``_cache``, ``fusion``,
``anchor_memory``), gathered in the :mod:`~contextrast.functional.batched` namespace; each
piece names the reference it equals and is tested against it. Two utilities are public
besides: :func:`distance_transform` (exact, batched; the boundary metrics use it) and
:func:`resize_labels`. :func:`supervised_contrastive_loss` is the peers' loss.
"""

from contextrast.functional import batched, reference
from contextrast.functional.batched import distance_transform, resize_labels
from contextrast.functional.checks import NonFiniteError, check_labels, compute_dtype
from contextrast.functional.loss import (
    ContextrastTerms,
    LayerTargets,
    contextrast_loss,
    layer_targets,
)
from contextrast.functional.reference import (
    adaptive_updated_anchors,
    anchor_anchor_loss,
    bane_select,
    class_error_maps,
    class_prioritized_anchors,
    distance_map,
    hard_negative_mask,
    info_nce,
    pa_loss,
    pixel_anchor_loss,
    representative_anchors,
    semi_hard_select,
    total_loss,
    updated_anchors,
)
from contextrast.functional.supcon import supervised_contrastive_loss

__all__ = [
    "ContextrastTerms",
    "LayerTargets",
    "NonFiniteError",
    "adaptive_updated_anchors",
    "anchor_anchor_loss",
    "bane_select",
    "batched",
    "check_labels",
    "class_error_maps",
    "class_prioritized_anchors",
    "compute_dtype",
    "contextrast_loss",
    "distance_map",
    "distance_transform",
    "hard_negative_mask",
    "info_nce",
    "layer_targets",
    "pa_loss",
    "pixel_anchor_loss",
    "reference",
    "representative_anchors",
    "resize_labels",
    "semi_hard_select",
    "supervised_contrastive_loss",
    "total_loss",
    "updated_anchors",
]
