"""The peer contrastive losses of Table 2, behind ContextrastLoss's interface.

Each is an ``nn.Module`` with ``forward(features, logits, target) -> scalar`` that owns its
projection heads and returns its loss already multiplied by its weight. Facts and the
differences from each peer's public code are in docs/method.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from contextrast import functional as CF
from contextrast.contrast.memory import ClassQueue
from contextrast.contrast.projection import ProjectionHead, prepare_features
from contextrast.contrast.sampling import BalancedRandomSampler, HardAnchorSampler
from contextrast.models.heads import concat_upsampled

__all__ = [
    "MultiScaleCrossScaleLoss",
    "PixelContrastLoss",
    "PixelContrastMemory",
    "RegionContrastLoss",
]


def _prepare(
    module: nn.Module,
    features: Sequence[torch.Tensor],
    in_channels: Sequence[int],
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int,
) -> list[torch.Tensor]:
    """Checked target, and the features checked and cast to ``module``'s dtype."""
    CF.check_labels(target, num_classes, ignore_index, "target")
    dtype = next(module.parameters()).dtype
    return prepare_features(features, in_channels, target.shape[0], dtype, module.training)


def _gather(
    embeddings: torch.Tensor, labels: torch.Tensor, picked: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """embeddings (B, D, P), labels (B, P), picked (B, P) bool -> the picked pixels'
    (features (A, D), with gradient, labels (A,))."""
    return embeddings.transpose(1, 2)[picked], labels[picked]


class _SingleMapProjection(nn.Module):
    """Shared by the losses that project one map: the concatenation of all feature maps
    ("concat", HRNet) or the deepest one ("last", DeepLabV3)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        embed_dim: int,
        feature: str,
        ignore_index: int,
    ):
        super().__init__()
        if feature not in ("concat", "last"):
            raise ValueError(f"unknown feature {feature!r}; choose from ['concat', 'last']")
        self.num_classes, self.in_channels = num_classes, list(in_channels)
        self.feature, self.ignore_index = feature, ignore_index
        width = sum(self.in_channels) if feature == "concat" else self.in_channels[-1]
        self.head = ProjectionHead(width, embed_dim)

    def project(self, features: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Validated inputs -> embeddings (B, D, h, w) of the chosen map."""
        features = _prepare(
            self, features, self.in_channels, target, self.num_classes, self.ignore_index
        )
        x = concat_upsampled(features) if self.feature == "concat" else features[-1]
        return self.head(x)


class PixelContrastLoss(_SingleMapProjection):
    """Pixel contrast (Wang et al., ICCV21): supervised contrast between sampled pixels.

    Args:
        num_classes: N.
        in_channels: channels of the model's feature maps, lowest layer first.
        feature: "concat" (all maps upsampled and concatenated, as on HRNet: 720 channels for
            W48) or "last" (the deepest map, as on DeepLabV3).
        embed_dim, temperature, base_temperature, loss_weight: as the paper (256, 0.1, 0.07,
            0.1).
        max_samples, max_views: hard-anchor sampling bounds (1024, 100).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        embed_dim: int = 256,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        loss_weight: float = 0.1,
        max_samples: int = 1024,
        max_views: int = 100,
        feature: Literal["concat", "last"] = "concat",
        ignore_index: int = 255,
    ):
        super().__init__(num_classes, in_channels, embed_dim, feature, ignore_index)
        self.temperature, self.base_temperature = temperature, base_temperature
        self.loss_weight = loss_weight
        self.sampler = HardAnchorSampler(max_samples, max_views, ignore_index)

    def embed(
        self, features: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> embeddings (B, D, P), labels (B, P), predictions (B, P) at the map's size."""
        embeddings = self.project(features, target)  # (B, D, h, w)
        size = tuple(embeddings.shape[-2:])
        labels = CF.resize_labels(target, size).flatten(1)  # (B, P)
        pred = CF.resize_labels(logits.argmax(1), size).flatten(1)  # (B, P)
        return embeddings.flatten(2), labels, pred

    def forward(
        self, features: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        embeddings, labels, pred = self.embed(features, logits, target)
        picked = self.sampler(labels, pred)  # (B, P)
        if not bool(picked.any()):
            return embeddings.sum() * 0.0
        x, y = _gather(embeddings, labels, picked)
        loss = CF.supervised_contrastive_loss(x, y, self.temperature, self.base_temperature)
        return self.loss_weight * loss


class PixelContrastMemory(nn.Module):
    """Pixel contrast with a memory bank, in the spirit of pytorch-metric-learning's
    ``CrossBatchMemory``: the sampled anchors contrast against themselves and against
    per-class queues of past pixels and past segment means (gathered over all ranks).

    Each image pushes, per class present, its mean embedding (segment queue) and
    ``pixels_per_class`` random pixels (pixel queue).

    Args:
        loss: the wrapped :class:`PixelContrastLoss` (its head and sampler are used).
        queue_size: entries per class in each queue (5000).
        pixels_per_class: pixels pushed per image and class (10).
    """

    def __init__(self, loss: PixelContrastLoss, queue_size: int = 5000, pixels_per_class: int = 10):
        super().__init__()
        self.loss = loss
        dim = loss.head.net[-1].out_channels
        self.pixel_queue = ClassQueue(loss.num_classes, queue_size, dim)
        self.segment_queue = ClassQueue(loss.num_classes, queue_size, dim)
        self.pixels_per_class = pixels_per_class

    def forward(
        self, features: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        loss = self.loss
        embeddings, labels, pred = loss.embed(features, logits, target)
        picked = loss.sampler(labels, pred)  # (B, P)
        value = embeddings.sum() * 0.0
        if bool(picked.any()):
            x, y = _gather(embeddings, labels, picked)
            pixel_keys, pixel_labels = self.pixel_queue.contents()
            segment_keys, segment_labels = self.segment_queue.contents()
            value = loss.loss_weight * CF.supervised_contrastive_loss(
                x,
                y,
                loss.temperature,
                loss.base_temperature,
                queue_features=torch.cat([pixel_keys, segment_keys]),
                queue_labels=torch.cat([pixel_labels, segment_labels]),
            )
        self._enqueue(embeddings.detach(), labels)
        return value

    @torch.no_grad()
    def _enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """embeddings: (B, D, P); labels: (B, P)."""
        pixel_keys, pixel_labels, segment_keys, segment_labels = [], [], [], []
        for b in range(labels.shape[0]):
            for c in torch.unique(labels[b]).tolist():
                if c == self.loss.ignore_index:
                    continue
                members = torch.nonzero(labels[b] == c).squeeze(1)
                vectors = embeddings[b][:, members].t()  # (n, D)
                segment_keys.append(F.normalize(vectors.mean(0), dim=0)[None])
                segment_labels.append(c)
                chosen = torch.randperm(members.numel(), device=members.device)
                chosen = chosen[: self.pixels_per_class]
                pixel_keys.append(vectors[chosen])
                pixel_labels.extend([c] * chosen.numel())
        device = embeddings.device
        if segment_keys:
            self.segment_queue.push(
                torch.cat(segment_keys), torch.tensor(segment_labels, device=device)
            )
            self.pixel_queue.push(torch.cat(pixel_keys), torch.tensor(pixel_labels, device=device))
        else:  # every rank must take part in the gathers
            empty = embeddings.new_zeros(0, embeddings.shape[1])
            none = torch.zeros(0, dtype=torch.long, device=device)
            self.segment_queue.push(empty, none)
            self.pixel_queue.push(empty, none)


class MultiScaleCrossScaleLoss(nn.Module):
    """Multi-scale and cross-scale contrast (Pissas et al., ECCV22).

    One projector per scale (Conv1×1 → ReLU → BN → Conv1×1); per scale, balanced random
    sampling and a supervised contrastive loss weighted by ``scale_weights`` (highest
    resolution first); the cross-scale term contrasts the highest-resolution samples against
    those of the last scale (and of the second-to-last when there are more than two).

    Args:
        in_channels: channels of the scales used, highest resolution first.
        feature_indices: which of the model's feature maps are the scales (default: all;
            DeepLabV3 in the paper: layer1, layer3, layer4 → (0, 2, 3)).
        scale_weights: one weight per scale (1, 0.7, 0.4, 0.1).
        cross_scale: include the cross-scale term.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        embed_dim: int = 256,
        temperature: float = 0.1,
        base_temperature: float = 0.1,
        loss_weight: float = 0.1,
        scale_weights: Sequence[float] = (1.0, 0.7, 0.4, 0.1),
        feature_indices: Sequence[int] | None = None,
        cross_scale: bool = True,
        min_pixels: int = 5,
        max_views: int = 2500,
        max_samples: int = 10000,
        ignore_index: int = 255,
    ):
        super().__init__()
        self.in_channels = list(in_channels)
        indices = (
            list(range(len(self.in_channels))) if feature_indices is None else list(feature_indices)
        )
        if any(not 0 <= i < len(self.in_channels) for i in indices):
            raise ValueError(
                f"feature_indices {indices} outside the model's {len(self.in_channels)} maps"
            )
        if len(scale_weights) != len(indices):
            raise ValueError(
                f"scale_weights has {len(scale_weights)} entries for {len(indices)} scales"
            )
        self.feature_indices, self.scale_weights = indices, [float(w) for w in scale_weights]
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.temperature, self.base_temperature = temperature, base_temperature
        self.loss_weight, self.cross_scale = loss_weight, cross_scale
        self.heads = nn.ModuleList(
            ProjectionHead(self.in_channels[i], embed_dim, order="relu_bn") for i in indices
        )
        self.sampler = BalancedRandomSampler(min_pixels, max_views, max_samples, ignore_index)

    def forward(
        self, features: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        features = _prepare(
            self, features, self.in_channels, target, self.num_classes, self.ignore_index
        )
        samples = []
        total = None
        for head, index, weight in zip(self.heads, self.feature_indices, self.scale_weights):
            embeddings = head(features[index])  # (B, D, h, w)
            labels = CF.resize_labels(target, tuple(embeddings.shape[-2:])).flatten(1)  # (B, P)
            picked = self.sampler(labels)  # (B, P)
            flat = embeddings.flatten(2)  # (B, D, P)
            zero = flat.sum() * 0.0
            total = zero if total is None else total + zero
            if not bool(picked.any()):
                samples.append(None)
                continue
            x, y = _gather(flat, labels, picked)
            samples.append((x, y))
            loss = CF.supervised_contrastive_loss(x, y, self.temperature, self.base_temperature)
            total = total + weight * loss
        if self.cross_scale and len(samples) > 1 and samples[0] is not None:
            x0, y0 = samples[0]
            others = [samples[-1]] + ([samples[-2]] if len(samples) > 2 else [])
            for other in others:
                if other is not None:
                    total = total + CF.supervised_contrastive_loss(
                        x0, y0, self.temperature, self.base_temperature, other[0], other[1]
                    )
        return self.loss_weight * total


class RegionContrastLoss(_SingleMapProjection):
    """Region-aware contrast (Hu et al., ICCV21): per image, the mean embedding of the pixels
    *predicted* as each class (a region centre, L2-normalised) is contrasted with the
    centres of past batches in a per-class queue: same class positive, other classes
    negative, dot-product similarity at τ = 0.2.

    Args:
        feature: "concat" or "last", as for pixel contrast.
        queue_size: centres kept per class (the public code: the number of training images).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        embed_dim: int = 256,
        temperature: float = 0.2,
        loss_weight: float = 0.1,
        queue_size: int = 1000,
        feature: Literal["concat", "last"] = "concat",
        ignore_index: int = 255,
    ):
        super().__init__(num_classes, in_channels, embed_dim, feature, ignore_index)
        self.temperature, self.loss_weight = temperature, loss_weight
        self.queue = ClassQueue(num_classes, queue_size, embed_dim)

    def forward(
        self, features: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        projected = self.project(features, target)  # (B, D, h, w)
        embeddings = projected.flatten(2)  # (B, D, P)
        with torch.no_grad():
            size = tuple(projected.shape[-2:])
            pred = CF.resize_labels(logits.argmax(1), size).flatten(1)  # (B, P)
            valid = CF.resize_labels(target, size).flatten(1) != self.ignore_index
            pred = torch.where(valid, pred, torch.full_like(pred, self.num_classes))
            one_hot = CF.batched.class_one_hot(
                pred, self.num_classes, embeddings.dtype
            )  # (B, N, P)
            counts = one_hot.sum(2)  # (B, N)
        sums = torch.bmm(one_hot, embeddings.transpose(1, 2))  # (B, N, D)
        present = counts > 0  # (B, N)
        centres = F.normalize(sums[present], dim=1)  # (R, D)
        labels = torch.nonzero(present)[:, 1]  # (R,)
        value = embeddings.sum() * 0.0
        keys, key_labels = self.queue.contents()
        if centres.shape[0] > 0:
            # Plain InfoNCE: base temperature = temperature (no τ / τ_base scaling).
            value = self.loss_weight * CF.supervised_contrastive_loss(
                centres,
                labels,
                self.temperature,
                self.temperature,
                queue_features=keys,
                queue_labels=key_labels,
            )
        self.queue.push(centres.detach(), labels)
        return value
