"""Decode heads: DeepLabV3's ASPP, HRNetV2's concatenation head, OCR, and an FCN auxiliary.

Every decode head maps the encoder's feature list to ``(logits, aux_logits)``; ``aux_logits``
is None unless the architecture computes it as part of its forward (OCR's soft object
regions). ``output_level`` names the feature map whose resolution the logits have.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPPHead", "FCNHead", "HRNetV2Head", "OCRHead"]


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def concat_upsampled(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(B, C_i, h_i, w_i)] -> (B, ΣC_i, h_0, w_0): every map resized to the first's size."""
    size = features[0].shape[-2:]
    resized = [features[0]] + [
        F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]
    ]
    return torch.cat(resized, dim=1)


class _ASPPPooling(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.project = conv_bn_relu(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))  # (B, C, 1, 1)
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPPHead(nn.Module):
    """DeepLabV3: atrous spatial pyramid pooling on the last feature map.

    Branches 1×1, three 3×3 with ``rates``, and image pooling, each ``channels`` wide;
    concatenated and projected, then 3×3 conv-BN-ReLU and the classifier.

    Args:
        in_channels: C of the last encoder map (2048 for ResNet-101).
        num_classes: N.
        channels: width of the branches (256 in DeepLabV3).
        rates: dilation rates; (12, 24, 36) at output stride 8.
    """

    output_level = -1

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, 3, rate) for rate in rates]
            + [_ASPPPooling(in_channels, channels)]
        )
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels)
        self.bottleneck = conv_bn_relu(channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, None]:
        x = features[-1]  # (B, C, H/8, W/8)
        x = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.classifier(self.dropout(self.bottleneck(x))), None


class FCNHead(nn.Module):
    """Auxiliary FCN head (training only): 3×3 conv-BN-ReLU, dropout, classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout=0.1):
        super().__init__()
        self.block = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w) -> (B, N, h, w)."""
        return self.classifier(self.dropout(self.block(x)))


class HRNetV2Head(nn.Module):
    """HRNetV2: all branches upsampled to the highest resolution and concatenated, then a
    1×1 conv-BN-ReLU and the classifier (logits at stride 4 for HRNet).

    Args:
        in_channels: channels of every feature map (their sum is the concatenation's width).
        num_classes: N.
        channels: width of the fused map (default: the concatenation's width, as HRNetV2).
    """

    output_level = 0

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        channels: int | None = None,
    ):
        super().__init__()
        width = sum(in_channels)
        fused = width if channels is None else channels
        self.fuse = conv_bn_relu(width, fused)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(fused, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, None]:
        x = self.fuse(concat_upsampled(features))  # (B, ΣC, H/4, W/4)
        return self.classifier(self.dropout(x)), None


class OCRHead(nn.Module):
    """Object-contextual representations (OCRNet) on the concatenated HRNetV2 features.

    1. Soft object regions: a 1×1 conv-BN-ReLU + classifier on the concatenation gives the
       auxiliary logits (supervised with CE, weight 0.4 in OCRNet).
    2. Pixel representations: 3×3 conv-BN-ReLU to ``mid_channels``.
    3. Object region representations: per class, the pixel representations averaged with
       the spatial softmax of that class's soft region.
    4. Object attention: pixel queries against object keys (``key_channels``), scaled dot
       product; the attended object context, concatenated with the pixel representations,
       is projected and classified.
    """

    output_level = 0

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        mid_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.05,
    ):
        super().__init__()
        width = sum(in_channels)
        self.soft_regions = nn.Sequential(
            conv_bn_relu(width, width), nn.Conv2d(width, num_classes, 1)
        )
        self.pixels = conv_bn_relu(width, mid_channels, 3)
        self.query = nn.Sequential(
            conv_bn_relu(mid_channels, key_channels), conv_bn_relu(key_channels, key_channels)
        )
        self.key = nn.Sequential(
            conv_bn_relu(mid_channels, key_channels), conv_bn_relu(key_channels, key_channels)
        )
        self.value = conv_bn_relu(mid_channels, key_channels)
        self.up = conv_bn_relu(key_channels, mid_channels)
        self.fuse = conv_bn_relu(2 * mid_channels, mid_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)
        self.key_channels = key_channels

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = concat_upsampled(features)  # (B, ΣC, h, w)
        aux = self.soft_regions(x)  # (B, N, h, w)
        pixels = self.pixels(x)  # (B, M, h, w)
        b, _, h, w = pixels.shape
        regions = torch.softmax(aux.flatten(2), dim=2)  # (B, N, hw) spatial softmax per class
        objects = torch.bmm(regions, pixels.flatten(2).transpose(1, 2))  # (B, N, M)
        objects = objects.transpose(1, 2).unsqueeze(3)  # (B, M, N, 1) as a 2-D map for convs
        query = self.query(pixels).flatten(2).transpose(1, 2)  # (B, hw, K)
        key = self.key(objects).flatten(2)  # (B, K, N)
        value = self.value(objects).flatten(2).transpose(1, 2)  # (B, N, K)
        attention = torch.softmax(torch.bmm(query, key) * self.key_channels**-0.5, dim=2)
        context = torch.bmm(attention, value).transpose(1, 2)  # (B, K, hw)
        context = self.up(context.reshape(b, self.key_channels, h, w))  # (B, M, h, w)
        out = self.fuse(torch.cat([context, pixels], dim=1))
        return self.classifier(self.dropout(out)), aux
