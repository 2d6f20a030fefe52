"""The loss's options and inputs, checked before any work: one-line errors naming the
first bad value (:func:`check_options` for the hyper-parameters, which the module's
constructor shares; :func:`check_call` for one call's tensors), and the finiteness probe."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from contextrast.functional._targets import LayerTargets
from contextrast.functional.checks import (
    NonFiniteError,
    check_fraction,
    check_loss_inputs,
    is_finite,
    raise_if_nonfinite,
)
from contextrast.functional.fusion import FusionWeights

__all__ = [
    "HARD_NEGATIVE_MODES",
    "PAIR_FORMS",
    "POOL_PER_NEGATIVE",
    "SPARSE_FROM_CLASSES",
    "Embedding",
    "check_call",
    "check_finite",
    "check_hard",
    "check_options",
]

HARD_NEGATIVE_MODES = ("only", "include", "add")
#: how the pixel-anchor pairs are scored: "dense" (every anchor against every pixel, the
#: sampling as masks; the default), "sparse" (positives and BANE picks one product per
#: pixel, ordinary negatives from a random pool per layer shared by all anchors:
#: :mod:`._sparse`), "auto" (sparse from :data:`SPARSE_FROM_CLASSES` classes on).
PAIR_FORMS = ("auto", "dense", "sparse")
#: where "auto" turns sparse: the two cost the same at 19 classes on the CPU proxy (4 × 256 ×
#: 512), dense is 1.3× faster at 10 and sparse 2.6× at 171 (docs/benchmarks.md); below it
#: dense also launches fewer operators (issue 14's bound).
SPARSE_FROM_CLASSES = 20
#: the sparse form's pool per layer, in units of ``max_negatives``: a class holding at most
#: 3/4 of a layer's pixels still finds ``max_negatives`` others in it, on average.
POOL_PER_NEGATIVE = 4

#: One layer's embeddings: a (B, d, h, w) map, or ``(coords (B, K, h, w), lift (d, K))`` with
#: ``v = lift @ c`` per pixel (:meth:`~contextrast.contrast.ProjectionHead.factored`).
Embedding = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_options(
    *,
    layers: int,
    temperature: float,
    layer_weights: Sequence[float],
    w_high: float,
    hard_negatives: str,
    max_pixels: int | None,
    max_positives: int | None,
    max_negatives: int | None,
    pair_form: str = "dense",
) -> None:
    """Raise a one-line ``ValueError`` naming the first bad hyper-parameter of the loss (the
    module's constructor and :func:`contextrast_loss` both call it)."""
    if len(layer_weights) != layers:
        raise ValueError(
            f"layer_weights has {len(layer_weights)} entries but there are {layers} layers; "
            "pass one weight per layer, lowest layer first"
        )
    if any(not (isinstance(x, (int, float)) and x >= 0) for x in layer_weights):
        raise ValueError(f"layer_weights must be numbers >= 0, got {list(layer_weights)}")
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and 0 < temperature < float("inf")
    ):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    check_fraction("w_high", w_high)
    if hard_negatives not in HARD_NEGATIVE_MODES:
        raise ValueError(
            f"unknown hard_negatives {hard_negatives!r}; choose from {list(HARD_NEGATIVE_MODES)}"
        )
    if pair_form not in PAIR_FORMS:
        raise ValueError(f"unknown pair_form {pair_form!r}; choose from {list(PAIR_FORMS)}")
    for name, value in (
        ("max_pixels", max_pixels),
        ("max_positives", max_positives),
        ("max_negatives", max_negatives),
    ):
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        ):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _shapes(pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list[tuple[int, ...]]:
    """Each layer's (B, d, h, w), d from the lift of a factored pair."""
    if not all(torch.is_tensor(coords) for coords, _ in pairs):
        kinds = [type(coords).__name__ for coords, _ in pairs]
        raise ValueError(f"embeddings must be tensors (or (coords, lift) pairs), got {kinds}")
    return [
        tuple(c.shape)
        if lift is None or c.dim() != 4
        else (c.shape[0], lift.shape[0], *c.shape[2:])
        for c, lift in pairs
    ]


def check_call(
    embeddings: Sequence[Embedding],
    logits: torch.Tensor,
    target: torch.Tensor,
    loss_weight: float,
    layer_weights: Sequence[float],
    targets: LayerTargets | None,
    fusion: FusionWeights | None,
    options: dict,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """One-line errors for the options and the inputs' shapes, before any work. Returns the
    embeddings as (coords, lift) pairs (lift ``None`` for a formed map)."""
    if torch.is_tensor(embeddings) or len(embeddings) == 0:
        got = f"a tensor {tuple(embeddings.shape)}" if torch.is_tensor(embeddings) else "none"
        raise ValueError(f"embeddings must be a list of one map per layer (1 or more), got {got}")
    pairs = [(e, None) if torch.is_tensor(e) else e for e in embeddings]  # (coords, lift)
    sizes = tuple(tuple(coords.shape[-2:]) for coords, _ in pairs)
    check_options(layers=len(sizes), layer_weights=layer_weights, **options)
    if not isinstance(loss_weight, numbers.Real) or not 0 <= loss_weight < math.inf:
        raise ValueError(f"loss_weight must be a finite number >= 0, got {loss_weight!r}")
    shapes = _shapes(pairs)
    check_loss_inputs(shapes, logits, target)
    if targets is not None and (
        not isinstance(targets, LayerTargets)
        or targets.layout.sizes != sizes
        or targets.layout.batch != target.shape[0]
        or targets.labels.device != target.device
    ):
        got = (
            f"batch {targets.layout.batch}, sizes {list(targets.layout.sizes)} on "
            f"{targets.labels.device}"
            if isinstance(targets, LayerTargets)
            else type(targets)
        )
        raise ValueError(
            f"targets must be layer_targets(logits, target, sizes) of this batch "
            f"({target.shape[0]} images on {target.device}) and the embeddings' sizes "
            f"{list(sizes)}, got {got}"
        )
    d = shapes[0][1]
    if fusion is not None and (
        not isinstance(fusion, FusionWeights) or fusion.query.shape != (len(sizes) - 1, d, d)
    ):
        got = tuple(fusion.query.shape) if isinstance(fusion, FusionWeights) else type(fusion)
        raise ValueError(
            f"fusion must be FusionWeights of {len(sizes) - 1} modules for d = {d} (query "
            f"{(len(sizes) - 1, d, d)}), got {got}"
        )
    return pairs


def check_hard(hard: torch.Tensor | None, labels: torch.Tensor) -> None:
    """``hard`` must be None or a bool mask of the labels' flat axis."""
    if hard is None or (
        torch.is_tensor(hard)
        and hard.dtype == torch.bool
        and hard.shape == labels.shape
        and hard.device == labels.device
    ):
        return
    got = (
        f"{hard.dtype} {tuple(hard.shape)} on {hard.device}"
        if torch.is_tensor(hard)
        else type(hard).__name__
    )
    raise ValueError(
        f"hard must be a bool mask of the layers' flat axis {tuple(labels.shape)} (a "
        f"sampler's pick on layer_targets' labels), got {got}"
    )


def check_finite(total: torch.Tensor, logits: torch.Tensor, embeddings: list) -> None:
    """One synchronisation: the loss and one logit. NaN embeddings make the loss NaN, but
    NaN logits leave it finite (BANE reads only their argmax), so one value of them joins
    the probe: a NaN from the model (its weights, a normalisation's statistics) fills its
    logits, and reading them all would cost more than the loss's budget of operators."""
    if is_finite(total + logits.as_strided((), ())):  # no backward ever reaches the sum
        return
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("logits hold NaN or inf values (BANE reads their argmax)")
    raise_if_nonfinite(embeddings, "embeddings")
    raise NonFiniteError(f"the loss is {total.item()} although its inputs are finite")
