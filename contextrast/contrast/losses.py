"""Contextrast loss: contextual contrastive learning (CCL) with BANE sampling (paper §3)."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from contextrast.contrast.fusion import AnchorFusion
from contextrast.contrast.memory import ClassQueue
from contextrast.contrast.projection import (
    NonFiniteError,
    ProjectionHead,
    prepare_features,
    raise_if_nonfinite,
)
from contextrast.contrast.sampling import BaneSampler, PixelSampler, SemiHardSampler
from contextrast.functional.anchor_memory import anchor_anchor_loss, class_prioritized_anchors
from contextrast.functional.checks import (
    check_fraction,
    check_layer_order,
    check_map_size,
    check_rank,
)
from contextrast.functional.loss import (
    ContextrastTerms,
    check_options,
    contextrast_loss,
    layer_targets,
)
from contextrast.utils.distributed import world_size

__all__ = ["ContextrastLoss", "ContextrastTerms"]

NEGATIVE_SAMPLERS = {"bane": BaneSampler, "semi_hard": SemiHardSampler}
ANCHOR_FUSIONS = ("fixed", "adaptive", "residual")


def _check_channels(in_channels: Sequence[int]) -> list[int]:
    """``in_channels`` as a list of positive ints, one per layer, or a one-line ValueError."""
    iterable = isinstance(in_channels, Iterable) and not isinstance(in_channels, (str, bytes))
    channels = list(in_channels) if iterable else None
    if not channels or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels
    ):
        raise ValueError(
            "in_channels must be a list of positive ints, one per feature layer, lowest layer "
            f"first (e.g. model.feature_channels or FeatureTap.channels(images)), got "
            f"{in_channels!r}"
        )
    return channels


def _count(name: str, value: object) -> int:
    """``value`` as an int >= 0 (any integer type: a NumPy or 0-d tensor integer too), or a
    one-line ``ValueError`` naming ``name``."""
    try:
        if isinstance(value, (bool, float)) or (
            torch.is_tensor(value) and value.dtype == torch.bool
        ):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be an int >= 0, got {count}")
    return count


def _flag(name: str, value: object) -> bool:
    """``value`` as a bool, or a one-line ``ValueError``: ``"no"`` would otherwise count
    as true."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _positive(name: str, value: object, none: bool = False) -> int | None:
    """``value`` as an int >= 1 (or None where ``none``), or a one-line ``ValueError``."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "an int >= 1" + (" or None" if none else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def _check_schedule(
    start_step: object,
    ramp_steps: object,
    stop_step: object,
    bane_start_step: object,
    encoder_start_step: object,
) -> tuple[int, int, int | None, int, int]:
    """The schedule's steps as ints, or a one-line ValueError naming the first bad one (a
    stop before the term is on at full weight, a start that would never take effect)."""
    start_step = _count("start_step", start_step)
    ramp_steps = _count("ramp_steps", ramp_steps)
    bane_start_step = _count("bane_start_step", bane_start_step)
    encoder_start_step = _count("encoder_start_step", encoder_start_step)
    if stop_step is not None:
        stop_step = _count("stop_step", stop_step)
        first = max(start_step + ramp_steps, start_step + 1)  # α reached (or the term on)
        if stop_step < first:
            raise ValueError(
                f"stop_step={stop_step} must be >= start_step + ramp_steps = {first} (the "
                "term would stop before it is on at full weight); None: never stop"
            )
        for name, value in (("bane_start_step", bane_start_step),
                            ("encoder_start_step", encoder_start_step)):  # fmt: skip
            if value >= stop_step:
                raise ValueError(
                    f"{name}={value} >= stop_step={stop_step}: it would never take effect"
                )
    return start_step, ramp_steps, stop_step, bane_start_step, encoder_start_step


def _check_negatives(negatives: object, bane_ratio: float) -> None:
    """``negatives`` a known name or a PixelSampler whose own K agrees with ``bane_ratio``."""
    if isinstance(negatives, str) and negatives not in NEGATIVE_SAMPLERS:
        raise ValueError(
            f"unknown negatives {negatives!r}; choose from {sorted(NEGATIVE_SAMPLERS)} or "
            "pass a PixelSampler instance"
        )
    if not isinstance(negatives, (str, PixelSampler)):
        raise ValueError(
            f"negatives must be one of {sorted(NEGATIVE_SAMPLERS)} or a PixelSampler "
            f"instance (contextrast.contrast.sampling), got {type(negatives).__name__}"
        )
    ratio = getattr(negatives, "ratio", None)
    if ratio is not None and bane_ratio not in (0, ratio):
        # Its own K picks; a different bane_ratio would be reported but not used.
        raise ValueError(
            f"bane_ratio={bane_ratio} but negatives={type(negatives).__name__}(ratio={ratio})"
            f" picks by its own K: give bane_ratio={ratio} (or 0 to switch it off)"
        )


def _check_fusion(anchor_fusion: object, detach_anchors: bool, layers: int) -> None:
    """``anchor_fusion`` a known reading that can train with these options."""
    if anchor_fusion not in ANCHOR_FUSIONS:
        raise ValueError(
            f"unknown anchor_fusion {anchor_fusion!r}; choose from {list(ANCHOR_FUSIONS)}"
        )
    if anchor_fusion != "fixed" and detach_anchors:
        raise ValueError(
            f"anchor_fusion={anchor_fusion!r} with detach_anchors=True: the fusion modules "
            "would never receive a gradient (and DDP would stop on their unused parameters); "
            "set one of them off"
        )
    if anchor_fusion != "fixed" and layers < 2:
        raise ValueError(
            f"anchor_fusion={anchor_fusion!r} fuses the lower layers' anchors with the last "
            f"layer's: it needs 2 layers or more, got {layers}"
        )


def _anchor_memory(num_classes: int, anchor_memory: object, embed_dim: int) -> ClassQueue | None:
    """Contextrast++'s per-class queues of ``anchor_memory`` anchors (``None``: off)."""
    anchor_memory = _positive("anchor_memory", anchor_memory, none=True)
    try:
        return None if anchor_memory is None else ClassQueue(num_classes, anchor_memory, embed_dim)
    except RuntimeError:  # the allocator's own message is pages of C++
        size = num_classes * anchor_memory * embed_dim * 4 / 2**30
        raise ValueError(
            f"anchor_memory={anchor_memory}: its queues need {size:.1f} GiB "
            f"({num_classes} classes x {anchor_memory} x {embed_dim} floats); Contextrast++ "
            "uses 100"
        ) from None


class ContextrastLoss(nn.Module):
    """Pixel-anchor loss over I encoder layers with fused anchors and BANE hard negatives.

    Owns the training-only projection heads (one per layer), so a model trained with it has
    exactly the parameters of its baseline at inference.

    Args:
        num_classes: N.
        in_channels: channels of each encoder feature map, lowest layer first.
        embed_dim: d of the embeddings.
        temperature: τ of eq. 4.
        layer_weights: λ_i per layer, lowest first (paper: 0.1, 0.4, 0.7, 1.0).
        w_high: weight of the last layer's anchors in ``Â_i = (1 − w_high)·A_i + w_high·A_I``.
        bane_ratio: K of BANE in [0, 1]; 0 gives plain CCL.
        loss_weight: α of eq. 5; the returned loss is already multiplied by it.
        ignore_index: label of unlabelled pixels.
        hidden_channels: hidden width of the projection heads (default: each layer's C).
        max_pixels: bound on the pixels per layer entering the similarity matrix (hard
            negatives first, then uniform); ``None`` uses every pixel.
        hard_negatives: ``"only"`` (an anchor that has BANE negatives contrasts against those
            alone; an anchor without any keeps its ordinary negatives), ``"include"`` (all
            ordinary negatives stay; BANE pixels are only guaranteed a place under
            ``max_pixels``) or ``"add"`` (all ordinary negatives stay and the BANE pixels are
            added to them once more: a hard negative counts twice in the denominator).
        max_positives: per anchor and layer, at most this many positives, drawn at random
            (``None``: all).
        max_negatives: per anchor and layer, at most this many ordinary negatives, and at most
            this many BANE negatives, drawn at random (``None``: all).
        pair_form: how the pairs are scored: ``"dense"`` (every anchor against every pixel,
            the sampling as (N, M) masks; the default), ``"sparse"`` (each positive and BANE
            pick one product, the ordinary negatives drawn from one random pool of 4 ×
            ``max_negatives`` pixels per layer shared by all anchors: work that grows with
            N × pool, not N·M; 2.6× faster at 171 classes, but 1.3 to 1.7 mIoU below
            dense on INIA19, docs/method.md) or ``"auto"`` (sparse from 20 classes on,
            ``functional.loss.SPARSE_FROM_CLASSES``). Both equal the reference with the
            sampling off and draw each anchor's pairs uniformly; their joint draws differ.
        negatives: the hard-negative sampler: "bane" (nearest the error edge), "semi_hard"
            (the same share of error pixels, at random: the Table 6 ablation), or any
            :class:`~contextrast.contrast.sampling.PixelSampler` instance (its pick replaces
            BANE's; ``bane_ratio`` then only switches it off at 0, and for a sampler with its
            own ``ratio``, as :class:`~contextrast.contrast.sampling.BaneSampler`, must be 0
            or that ratio).
        detach_anchors: stop the gradient through the anchors (default: anchors carry it).
        normalize_anchors: L2-normalise the fused anchors (``False``: plain means, eq. 1
            taken literally).
        global_anchors: under ``torch.distributed``, the anchors and the InfoNCE run over
            every process's pixels (the loss of one process holding the whole batch, for
            K = 0 and no sampling; BANE's quota and the sampling stay per process); no
            effect in one process. ``False``: each process alone (the peers' way). With it
            every process of the group must call the loss at each step (it makes
            collectives, as SyncBatchNorm does): a call on one rank only, under
            ``torch.distributed``, needs ``global_anchors=False``.
        start_step: the term is 0 (weight 0, still in the graph) before this step.
        ramp_steps: from ``start_step`` on, the weight rises linearly to α over this many
            steps (0: at once).
        stop_step: the term is 0 again (weight 0, still in the graph) from this step on
            (``None``: never): a term on the first part of training only, CE alone after.
        bane_start_step: BANE's hard negatives from this step on; before it the loss is plain
            CCL (the hardest negatives can trap early training, Contextrast++).
        encoder_start_step: the term's gradient reaches the features (the encoder) from this
            step on; before it the term trains the projection heads alone, on detached
            features (freshly initialised heads send the encoder arbitrary gradients, which
            an adaptive optimiser applies at full step size).
            The schedule options need ``step=`` in every call (the number of
            optimiser steps taken before it: 0 for the first), as the trainer passes.
        anchor_memory: Contextrast++'s class-balanced anchor memory, K_M entries per class
            (``None``: off, Contextrast). Each step adds ``α · L_AA``: every class of the
            finest layer takes its anchor from the deepest layer that still holds it, and
            contrasts it (L2-normalised, same τ) against the memory, its own class's
            entries the positives; then, in training mode, pushes it (detached) into its
            class's FIFO queue. The queues are buffers: in ``state_dict``, checkpoints and
            resume, on the loss's device. A class with an empty queue adds no term, so the
            first steps are plain Contextrast. Readings: docs/method.md.
        anchor_fusion: ``"fixed"``: ``Â_i = (1 − w_high)·A_i + w_high·A_I`` (Contextrast);
            ``"adaptive"``: Contextrast++'s learned fusion ``â_i = MLP_i(F_i(a_I) ⊕
            F_i(a_i))`` (:class:`~contextrast.contrast.fusion.AnchorFusion`, one module per
            lower layer, trained with the projection heads; ``w_high`` is then unused);
            ``"residual"``: the fixed fusion plus the learned one, ``Â_i = (1 − w_high)·A_i
            + w_high·A_I + MLP_i(…)``, the MLP's last layer starting at 0 (so training starts
            from Contextrast's fusion). Readings: docs/method.md.
        validate: per call, check the label values and that the loss is finite (two host
            synchronisations; a non-finite loss then names the bad feature map). The trainer
            turns it off: it checks the labels once before training and watches the loss on
            the device. Off, labels outside ``[0, N)`` and ``ignore_index`` give a wrong loss
            without a word: the caller has checked them.

    The defaults of ``embed_dim``, ``hard_negatives``, ``max_positives``, ``max_negatives``
    and ``normalize_anchors`` are the readings that gained most reliably over CE on the
    real-image INIA19 benchmark (docs/benchmarks.md); the paper-literal reading is
    ``hard_negatives="only", max_positives=None, max_negatives=None,
    normalize_anchors=False``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        embed_dim: int = 128,
        temperature: float = 0.1,
        layer_weights: Sequence[float] = (0.1, 0.4, 0.7, 1.0),
        w_high: float = 0.7,
        bane_ratio: float = 0.5,
        loss_weight: float = 0.1,
        ignore_index: int = 255,
        *,
        hidden_channels: int | None = None,
        max_pixels: int | None = None,
        max_positives: int | None = 1024,
        max_negatives: int | None = 1024,
        pair_form: Literal["auto", "dense", "sparse"] = "dense",
        hard_negatives: Literal["only", "include", "add"] = "add",
        negatives: Literal["bane", "semi_hard"] | PixelSampler = "bane",
        detach_anchors: bool = False,
        normalize_anchors: bool = True,
        global_anchors: bool = True,
        start_step: int = 0,
        ramp_steps: int = 0,
        stop_step: int | None = None,
        bane_start_step: int = 0,
        encoder_start_step: int = 0,
        anchor_memory: int | None = None,
        anchor_fusion: Literal["fixed", "adaptive", "residual"] = "fixed",
        validate: bool = True,
    ):
        super().__init__()
        start_step, ramp_steps, stop_step, bane_start_step, encoder_start_step = _check_schedule(
            start_step, ramp_steps, stop_step, bane_start_step, encoder_start_step
        )
        try:  # any integer type (a NumPy count from a dataset too), not a bool
            num_classes = _count("num_classes", num_classes)
        except ValueError:
            pass  # the message below says what is expected
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        in_channels = _check_channels(in_channels)
        layer_weights = [float(x) for x in layer_weights]
        check_options(
            layers=len(in_channels),
            temperature=temperature,
            layer_weights=layer_weights,
            w_high=w_high,
            hard_negatives=hard_negatives,
            max_pixels=max_pixels,
            max_positives=max_positives,
            max_negatives=max_negatives,
            pair_form=pair_form,
        )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise ValueError(f"ignore_index must be an int (255 by default), got {ignore_index!r}")
        ignore_index = int(ignore_index)
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} collides with a class id")
        embed_dim = _positive("embed_dim", embed_dim)
        hidden_channels = _positive("hidden_channels", hidden_channels, none=True)
        detach_anchors = _flag("detach_anchors", detach_anchors)
        normalize_anchors = _flag("normalize_anchors", normalize_anchors)
        global_anchors = _flag("global_anchors", global_anchors)
        validate = _flag("validate", validate)
        _check_negatives(negatives, bane_ratio)
        _check_fusion(anchor_fusion, detach_anchors, len(in_channels))
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.temperature = float(temperature)
        self.layer_weights = layer_weights
        self.w_high = check_fraction("w_high", w_high)
        self.bane_ratio = check_fraction("bane_ratio", bane_ratio)
        if isinstance(loss_weight, bool) or not (
            isinstance(loss_weight, numbers.Real) and 0 <= loss_weight < float("inf")
        ):
            raise ValueError(f"loss_weight must be a finite number >= 0, got {loss_weight!r}")
        self.loss_weight = float(loss_weight)
        self.ignore_index = ignore_index
        self.hard_negatives = hard_negatives
        self.detach_anchors = detach_anchors
        self.normalize_anchors = normalize_anchors
        self.heads = nn.ModuleList(
            ProjectionHead(c, embed_dim, hidden_channels) for c in in_channels
        )
        self.negatives = negatives if isinstance(negatives, str) else type(negatives).__name__
        if isinstance(negatives, str):
            # validate=False: the loss checks the labels itself (or its caller did).
            negatives = NEGATIVE_SAMPLERS[negatives](self.bane_ratio, ignore_index, validate=False)
        self.sampler = negatives
        self.max_pixels = max_pixels
        self.max_positives = max_positives
        self.max_negatives = max_negatives
        self.pair_form = pair_form
        self.global_anchors = global_anchors
        self.start_step, self.ramp_steps, self.stop_step = start_step, ramp_steps, stop_step
        self.bane_start_step = bane_start_step
        self.encoder_start_step = encoder_start_step
        self.validate = validate
        self.anchor_fusion = anchor_fusion
        self.fusion = (
            None
            if anchor_fusion == "fixed"
            else AnchorFusion(len(in_channels) - 1, embed_dim, zero_out=anchor_fusion == "residual")
        )
        self.memory = _anchor_memory(num_classes, anchor_memory, embed_dim)

    @property
    def scheduled(self) -> bool:
        """Whether the term or BANE depends on the step (``step=`` is then required)."""
        return bool(
            self.start_step or self.ramp_steps or self.bane_start_step
            or self.encoder_start_step or self.stop_step is not None
        )  # fmt: skip

    def weight_at(self, step: int | None) -> float:
        """The factor on α at ``step`` (1 without a schedule): 0 before ``start_step``, then
        a linear ramp over ``ramp_steps``, 0 again from ``stop_step`` on."""
        if not self.scheduled:
            return 1.0
        if step is None:
            raise ValueError(
                "this ContextrastLoss has a schedule (start_step, ramp_steps, stop_step, "
                "bane_start_step or encoder_start_step): pass step= (optimiser steps taken so "
                "far) in every call"
            )
        if step < self.start_step or (self.stop_step is not None and step >= self.stop_step):
            return 0.0
        return min(1.0, (step - self.start_step + 1) / self.ramp_steps) if self.ramp_steps else 1.0

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, temperature={self.temperature}, "
            f"layer_weights={self.layer_weights}, w_high={self.w_high}, "
            f"bane_ratio={self.bane_ratio}, loss_weight={self.loss_weight}, "
            f"negatives={self.negatives!r}, hard_negatives={self.hard_negatives!r}, "
            f"max_pixels={self.max_pixels}, pair_form={self.pair_form!r}, "
            f"max_positives={self.max_positives}, "
            f"max_negatives={self.max_negatives}, "
            f"normalize_anchors={self.normalize_anchors}"
            + (
                f", start_step={self.start_step}, ramp_steps={self.ramp_steps}, "
                f"stop_step={self.stop_step}, bane_start_step={self.bane_start_step}, "
                f"encoder_start_step={self.encoder_start_step}"
                if self.scheduled
                else ""
            )
            + (f", anchor_memory={self.memory.size}" if self.memory is not None else "")
            + (f", anchor_fusion={self.anchor_fusion!r}" if self.fusion is not None else "")
        )

    def forward(
        self,
        features: Sequence[torch.Tensor],
        logits: torch.Tensor,
        target: torch.Tensor,
        step: int | None = None,
    ) -> torch.Tensor:
        """Weighted pixel-anchor loss ``α · L_PA``; see :meth:`terms` for the arguments."""
        return self.terms(features, logits, target, step=step).loss

    def _embed(
        self, features: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each layer's unnormalised embeddings as ``(coords (B, K, h, w), lift (d, K))`` with
        ``v = lift @ c`` (:meth:`ProjectionHead.factored`), or ``(v (B, d, h, w), None)``.

        A layer is factored when it holds at least a quarter of all layers' pixels (the
        stride-4 map of a feature pyramid): there the d-dim maps would dominate the loss's
        memory. The smaller layers form their maps, which costs little memory and saves
        operations: consecutive formed layers are scored as one group.
        """
        pixels = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        total = sum(pixels)
        return [
            head.factored(feature) if 4 * count >= total else (head.net(feature), None)
            for head, feature, count in zip(self.heads, features, pixels)
        ]

    def _validate(
        self, features: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> list[torch.Tensor]:
        """Checks every input once; returns the features in the heads' dtype."""
        check_rank(target, 3, "target", "(B, H, W)")
        batch = target.shape[0]
        if batch == 0 or target.shape[1] * target.shape[2] == 0:
            raise ValueError(
                f"target has shape {tuple(target.shape)}: an empty batch has no pixel to "
                "contrast; skip it before the loss"
            )
        check_rank(logits, 4, "logits", "(B, N, h, w)")
        first = features[0] if isinstance(features, (list, tuple)) and features else None
        if (
            isinstance(first, torch.Tensor)
            and first.dim() == 4
            and logits.shape[0] == first.shape[0] != batch
        ):
            # The features and logits agree: the labels are the odd one out.
            raise ValueError(
                f"target (labels) has batch {batch} but the features and logits have batch "
                f"{first.shape[0]}; pass one (H, W) label map per image"
            )
        if logits.shape[:2] != (batch, self.num_classes):
            raise ValueError(
                f"logits must have shape (B, N, h, w) with B={batch}, N={self.num_classes}, "
                f"got {tuple(logits.shape)}"
            )
        dtype = next(self.heads.parameters()).dtype
        # NaN or inf in a feature map makes the loss non-finite: the loss is checked instead
        # (one synchronisation, not one per map), and the maps only when it fails.
        features = prepare_features(
            features, self.in_channels, batch, dtype, self.training, check_finite=False
        )
        labels_size = target.shape[-2:]
        check_layer_order("features", [f.shape[-2:] for f in features])
        for i, feature in enumerate(features):
            check_map_size(f"features[{i}]", feature.shape[-2:], labels_size)
        check_map_size("logits", logits.shape[-2:], labels_size)
        return features

    def terms(
        self,
        features: Sequence[torch.Tensor],
        logits: torch.Tensor,
        target: torch.Tensor,
        step: int | None = None,
    ) -> ContextrastTerms:
        """Compute the loss and its per-layer terms (:func:`functional.contextrast_loss
        <contextrast.functional.loss.contextrast_loss>` on the heads' embeddings).

        Args:
            features: I maps (B, C_i, h_i, w_i), lowest layer first, any resolutions.
            logits: (B, N, h, w) segmentation output; only its argmax is used (for BANE).
            target: (B, H, W) class ids with ``ignore_index``; resized (nearest) per layer.
            step: optimiser steps taken before this call (0 for the first); needed only
                with a schedule (``start_step``, ``ramp_steps``, ``stop_step``,
                ``bane_start_step``, ``encoder_start_step``).
        """
        step = None if step is None else _count("step", step)
        weight = self.weight_at(step)
        bane = self.bane_ratio > 0 and (step is None or step >= self.bane_start_step)
        features = self._validate(features, logits, target)
        if step is not None and step < self.encoder_start_step:
            features = [f.detach() for f in features]  # the heads learn, the encoder waits
        try:
            return self._loss(features, logits, target, weight, bane)
        except NonFiniteError:
            # NaN embeddings from finite logits: name the feature maps that carried them
            # (and reset the heads' statistics they poisoned) rather than the embeddings.
            if bool(torch.isfinite(logits).all()):
                self._explain_nonfinite(features)
            raise

    def _loss(
        self,
        features: list[torch.Tensor],
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: float,
        bane: bool,
    ) -> ContextrastTerms:
        """The sampler's pick, the heads, then the one functional call, on checked inputs
        (shapes as in :meth:`terms`); ``weight`` scales α (the schedule), ``bane`` says
        whether the sampler picks."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        targets = layer_targets(logits, target, sizes, self.ignore_index, self.validate)
        hard = None
        if bane:
            with torch.autocast(device_type=target.device.type, enabled=False):
                hard = self.sampler(
                    targets.labels, targets.pred, num_classes=self.num_classes,
                    layout=targets.layout,
                )  # fmt: skip
                if not self.sampler.picks_errors:
                    # A pick is a negative of its predicted class's anchor: a correctly
                    # predicted pixel would be its own anchor's positive and negative at once.
                    wrong = (targets.pred != targets.labels).bitwise_and_(
                        targets.labels != self.ignore_index
                    )
                    hard = hard & wrong
        # The heads after BANE: the distance transform's temporaries never meet their
        # activations (a lower peak of memory).
        terms = contextrast_loss(
            self._embed(features),
            logits,
            target,
            hard=hard,
            targets=targets,
            temperature=self.temperature,
            layer_weights=self.layer_weights,
            w_high=self.w_high,
            loss_weight=self.loss_weight * weight,
            ignore_index=self.ignore_index,
            hard_negatives=self.hard_negatives,
            max_pixels=self.max_pixels,
            max_positives=self.max_positives,
            max_negatives=self.max_negatives,
            pair_form=self.pair_form,
            normalize_anchors=self.normalize_anchors,
            detach_anchors=self.detach_anchors,
            global_anchors=self.global_anchors,
            validate=self.validate,
            fusion=None if self.fusion is None else self.fusion.weights(),
            fusion_residual=self.anchor_fusion == "residual",
        )
        if self.memory is None:
            return terms
        return self._with_anchor_memory(terms, weight)

    def _with_anchor_memory(self, terms: ContextrastTerms, weight: float) -> ContextrastTerms:
        """Contextrast++'s ``+ α · L_AA`` (eq. 10–12 of its text), then the push."""
        if not self.global_anchors and world_size() > 1:
            raise ValueError(
                "anchor_memory needs global_anchors=True under torch.distributed: each "
                "process's own anchors would fill the queues differently on every process"
            )
        queries, present = class_prioritized_anchors(terms.anchors, terms.class_counts)
        device = queries.device
        # float32 at least, outside the caller's autocast, as the PA term: bf16 would round
        # the similarities
        with torch.autocast(device_type=device.type, enabled=False):
            queries = queries.to(torch.promote_types(queries.dtype, torch.float32))
            queries = F.normalize(queries, dim=1)  # (N, d)
            memory, memory_classes = self.memory.padded()  # (N·K_M, d), (N·K_M,)
            classes = torch.arange(self.num_classes, device=device)
            memory = memory.to(queries.dtype, copy=True)  # the push below writes the buffer
            anchor_loss = anchor_anchor_loss(
                queries, classes, memory, memory_classes, self.temperature, present
            )
        if self.training:  # after the loss: a query never meets itself
            self.memory.push_rows(queries.detach(), present)
        return terms._replace(
            loss=terms.loss + self.loss_weight * weight * anchor_loss,
            anchor_loss=anchor_loss.detach(),
        )

    def _explain_nonfinite(self, features: Sequence[torch.Tensor]) -> None:
        """Raise :class:`NonFiniteError` naming the bad feature maps, after resetting the
        heads' BatchNorm statistics they poisoned (so a caller that skips the batch keeps a
        usable loss)."""
        reset = 0
        for module in self.heads.modules():
            stats = getattr(module, "running_var", None)
            if isinstance(module, nn.BatchNorm2d) and stats is not None:
                if not bool(
                    torch.isfinite(stats).all() & torch.isfinite(module.running_mean).all()
                ):
                    module.reset_running_stats()
                    reset += 1
        try:
            raise_if_nonfinite(features)
        except NonFiniteError as error:
            note = f"; {reset} projection-head BatchNorm layers had their statistics reset"
            raise NonFiniteError(f"{error}{note if reset else ''}") from None
