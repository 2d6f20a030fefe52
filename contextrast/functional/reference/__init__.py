"""The papers as code: one readable function per equation, in the papers' symbols, with loops
over classes and layers, plain autograd, nothing cached — the oracle the fast path
(:mod:`contextrast.functional.batched`, what :class:`~contextrast.ContextrastLoss` runs) is
tested against, and what docs/method.md cites. Slow by design; the analyses use them, a
training step does not.

- :mod:`.paper`: Contextrast (Sung et al.), §3.2–3.3: anchors, fusion, InfoNCE, BANE.
- :mod:`.contextrast_pp`: its follow-up Contextrast++: class-prioritised anchors, the
  anchor-to-anchor loss, the learned fusion.
- :mod:`.loss`: the whole term ``α·L_PA`` with BANE (and Contextrast++'s fusion as an
  option), composed of the two.
"""

from contextrast.functional.reference.contextrast_pp import (
    adaptive_updated_anchors,
    anchor_anchor_loss,
    class_prioritized_anchors,
    refine_anchor,
)
from contextrast.functional.reference.loss import contextrast_loss
from contextrast.functional.reference.paper import (
    bane_select,
    class_error_maps,
    distance_map,
    hard_negative_mask,
    info_nce,
    pa_loss,
    pixel_anchor_loss,
    quota,
    representative_anchors,
    semi_hard_select,
    total_loss,
    updated_anchors,
)

__all__ = [
    "adaptive_updated_anchors",
    "anchor_anchor_loss",
    "bane_select",
    "class_error_maps",
    "class_prioritized_anchors",
    "contextrast_loss",
    "distance_map",
    "hard_negative_mask",
    "info_nce",
    "pa_loss",
    "pixel_anchor_loss",
    "quota",
    "refine_anchor",
    "representative_anchors",
    "semi_hard_select",
    "total_loss",
    "updated_anchors",
]
