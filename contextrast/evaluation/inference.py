"""Test-time inference protocols: whole image, sliding window, multi-scale + flip.

``forward`` is any callable mapping normalised images (B, 3, h, w) to logits (B, N, h', w')
at any stride (e.g. ``model.inference()``, which already upsamples); outputs are resized to
the input size here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["predict_probabilities", "slide_logits", "whole_logits"]

Forward = Callable[[torch.Tensor], torch.Tensor]


def whole_logits(forward: Forward, images: torch.Tensor, size_divisor: int = 32) -> torch.Tensor:
    """images: (B, 3, H, W) -> (B, N, H, W) logits.

    The image is zero-padded (the mean colour after normalisation) at the bottom and right to
    a multiple of ``size_divisor`` (HRNet's branches need it) and the logits cropped back.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % size_divisor, (-width) % size_divisor
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    logits = forward(padded)
    if logits.shape[-2:] != padded.shape[-2:]:
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, :, :height, :width]


def _starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): a regular grid, the last one flush with the end."""
    if length <= crop:
        return [0]
    count = (length - crop + stride - 1) // stride + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


def slide_logits(
    forward: Forward,
    images: torch.Tensor,
    crop: Sequence[int],
    stride: Sequence[int],
    size_divisor: int = 32,
) -> torch.Tensor:
    """Average of window logits over overlapping crop × crop windows.

    images: (B, 3, H, W). Images smaller than the crop are padded (zeros = the mean colour
    after normalisation) and the padding is cut off again. Returns (B, N, H, W).
    """
    crop_h, crop_w = crop
    stride_h, stride_w = stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1:
        raise ValueError(f"crop {tuple(crop)} and stride {tuple(stride)} must be positive")
    b, _, height, width = images.shape
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    full_h, full_w = padded.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, full_h, full_w, device=images.device)
    for top in _starts(full_h, crop_h, stride_h):
        for left in _starts(full_w, crop_w, stride_w):
            window = padded[:, :, top : top + crop_h, left : left + crop_w]
            logits = whole_logits(forward, window, size_divisor)
            if total is None:
                total = images.new_zeros(b, logits.shape[1], full_h, full_w, dtype=logits.dtype)
            total[:, :, top : top + crop_h, left : left + crop_w] += logits
            count[:, :, top : top + crop_h, left : left + crop_w] += 1
    assert total is not None
    return (total / count)[:, :, :height, :width]


def predict_probabilities(
    forward: Forward,
    images: torch.Tensor,
    mode: str = "whole",
    crop: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size_divisor: int = 32,
) -> torch.Tensor:
    """Softmax probabilities averaged over scales (and horizontal flips).

    Each scale resizes the image (bilinear), runs ``mode`` ("whole" or "slide"), resizes the
    logits back to (H, W) and takes the softmax; flips are undone before averaging.

    images: (B, 3, H, W) normalised. Returns (B, N, H, W).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"unknown eval mode {mode!r}; choose from ['slide', 'whole']")
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    views = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            if mode == "whole":
                logits = whole_logits(forward, view, size_divisor)
            else:
                logits = slide_logits(forward, view, crop, stride, size_divisor)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(
                    logits, size=(height, width), mode="bilinear", align_corners=False
                )
            probabilities = logits.float().softmax(dim=1)
            total = probabilities if total is None else total + probabilities
            views += 1
    assert total is not None
    return total / views
