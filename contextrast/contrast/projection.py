"""Training-only projection heads π(·) that map encoder features to embeddings."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contextrast.functional.checks import NonFiniteError, is_finite, raise_if_nonfinite

__all__ = ["NonFiniteError", "ProjectionHead", "prepare_features"]


def prepare_features(
    features: Sequence[torch.Tensor],
    in_channels: Sequence[int],
    batch: int,
    dtype: torch.dtype,
    training: bool,
    check_finite: bool = True,
) -> list[torch.Tensor]:
    """Check a loss's feature maps once and cast them to its projection heads' ``dtype``.

    Args:
        features: I maps (B, C_i, h_i, w_i).
        in_channels: the C_i the loss was built for.
        batch: B of the target.
        dtype: the heads' parameter dtype: half-precision features of a model run without
            autocast are cast up (the loss's arithmetic stays in the heads' precision).
        training: in training mode a map with one value per channel (B = 1, 1×1) cannot
            pass the heads' BatchNorm.
        check_finite: check for NaN and inf here (``False``: the caller checks its result
            and calls :func:`raise_if_nonfinite` when that is not finite).

    Raises ``ValueError`` naming the map for a wrong type, shape or size, and
    :class:`NonFiniteError` when a map holds NaN or inf (one host sync for all maps).
    """
    if not isinstance(features, (list, tuple)) or len(features) != len(in_channels):
        got = len(features) if isinstance(features, (list, tuple)) else type(features).__name__
        raise ValueError(
            f"features must be a list of {len(in_channels)} maps (one per in_channels entry), "
            f"got {got}"
        )
    prepared = []
    for i, (feature, channels) in enumerate(zip(features, in_channels)):
        if not isinstance(feature, torch.Tensor) or feature.dim() != 4:
            raise ValueError(
                f"features[{i}] must have shape (B, C, h, w), got "
                f"{getattr(feature, 'shape', type(feature).__name__)}"
            )
        if feature.shape[:2] != (batch, channels):
            raise ValueError(
                f"features[{i}] must have shape (B, C, h, w) with B={batch}, C={channels}, "
                f"got {tuple(feature.shape)}"
            )
        if not feature.is_floating_point():
            raise ValueError(f"features[{i}] must be floating point, got {feature.dtype}")
        if training and feature.shape[0] * feature.shape[2] * feature.shape[3] == 1:
            raise ValueError(
                f"features[{i}] has one value per channel (batch 1, 1×1 map): the projection "
                "head's BatchNorm cannot train on it; use a batch of at least 2 or a larger "
                "input"
            )
        # Under autocast the heads' convolutions pick their own precision: no cast needed.
        autocast = torch.is_autocast_enabled(feature.device.type)
        prepared.append(feature if autocast or feature.dtype == dtype else feature.to(dtype))
    if check_finite:
        # One sum over all maps is finite iff every value is (x − x = 0 fails for NaN and
        # inf); only when it is not are the maps checked one by one (a sum can overflow).
        total = functools.reduce(operator.add, (_finite_probe(f) for f in prepared))
        if not is_finite(total):
            raise_if_nonfinite(prepared)
    return prepared


def _finite_probe(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of a map, in float32 for half precisions (whose sums overflow early)."""
    half = tensor.dtype in (torch.float16, torch.bfloat16)
    return tensor.sum(dtype=torch.float32) if half else tensor.sum()


class ProjectionHead(nn.Module):
    """Conv1×1 → BN → ReLU → Conv1×1, then L2 normalisation over channels.

    The two-layer form is the one of pixel contrast (Wang et al.), which the paper compares
    against; it is dropped after training, so it costs nothing at inference.

    Args:
        in_channels: C of the encoder feature map.
        embed_dim: d of the embeddings.
        hidden_channels: width of the hidden layer (default: ``in_channels``).
        order: "bn_relu" (Conv → BN → ReLU → Conv) or "relu_bn" (Conv → ReLU → BN → Conv,
            the multi-/cross-scale contrast projector).
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int = 256,
        hidden_channels: int | None = None,
        order: str = "bn_relu",
    ):
        super().__init__()
        hidden = in_channels if hidden_channels is None else hidden_channels
        for name, value in (("in_channels", in_channels), ("embed_dim", embed_dim)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if order not in ("bn_relu", "relu_bn"):
            raise ValueError(f"unknown order {order!r}; choose from ['bn_relu', 'relu_bn']")
        middle = [nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1, bias=order == "relu_bn"),
            *(middle if order == "bn_relu" else middle[::-1]),
            nn.Conv2d(hidden, embed_dim, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, C, H, W) -> (B, d, H, W), L2-normalised over d."""
        return F.normalize(self.net(features), dim=1)

    def factored(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unnormalised embeddings as ``lift @ coords``, without forming them if narrower.

        The last layer is linear, so each pixel's embedding is ``v = W h + b`` with h the
        hidden activation. When the hidden width K − 1 is below d, the loss can compute every
        dot product, norm and class mean of the v's in the K = hidden + 1 coordinates
        ``[h; 1]`` and never form the d-dim maps (the costliest tensors of the loss at the
        high-resolution layers): same values, far fewer bytes and FLOPs.

        Args:
            features: (B, C, H, W).

        Returns:
            coords: (B, K, H, W); lift: (d, K) ``[W | b]`` with gradient, or ``None`` when
            forming the embeddings is as cheap (then coords are the (B, d, H, W) raw
            embeddings). ``forward`` equals ``normalize(lift @ coords)`` per pixel.
        """
        last = self.net[-1]
        hidden = last.in_channels
        if hidden + 1 >= last.out_channels:
            return self.net(features), None
        h = self.net[:-1](features)  # (B, hidden, H, W)
        ones = h.new_ones(h.shape[0], 1, *h.shape[2:])
        coords = torch.cat([h, ones], dim=1)  # (B, K, H, W)
        lift = torch.cat([last.weight.flatten(1), last.bias.unsqueeze(1)], dim=1)  # (d, K)
        return coords, lift
