"""Paired image + label transforms.

Every random choice comes from the ``torch.Generator`` passed in, which the datasets derive
from (seed, epoch, sample index): augmentation is a function of those three only, whatever
the number of workers or processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from contextrast.data.metadata import IGNORE_INDEX

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "TrainTransform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """image: (3, H, W) uint8 -> float32 ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image.float() / 255.0 - mean_t) / std_t


class EvalTransform:
    """Normalisation only; resizing and sliding windows belong to the evaluator."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (3, H, W) uint8; label: (H, W) int64 -> (float image, label)."""
        return normalize(image, self.mean, self.std), label


class TrainTransform:
    """Random scale → colour jitter → horizontal flip → normalise → random crop (padded).

    Args:
        crop_size: (h, w) of the output; smaller inputs are padded (image with the mean,
            i.e. 0 after normalisation, label with ``ignore_index``).
        scale_range: the image is resized by a factor drawn uniformly from this range
            (paper: 0.5–2.0); the label by nearest neighbour only.
        hflip: probability of a horizontal flip (0 for sets where mirroring changes the
            class, such as digits).
        color_jitter: (brightness, contrast, saturation, hue) strengths; factors are drawn
            from [1 − s, 1 + s] (hue: [−s, s]); all zero disables it.
        mean, std: normalisation.
        ignore_index: label used for padding.
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 1024),
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        color_jitter: Sequence[float] = (0.25, 0.25, 0.25, 0.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ):
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) > 0, got {crop_size}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}"
            )
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        if (
            len(color_jitter) != 4
            or not all(0 <= v < math.inf for v in color_jitter)
            or color_jitter[3] > 0.5
        ):
            raise ValueError(
                "color_jitter must be (brightness, contrast, saturation, hue), finite and >= 0, "
                f"hue <= 0.5, got {color_jitter}"
            )
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = float(hflip)
        self.color_jitter = tuple(float(x) for x in color_jitter)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (3, H, W) uint8; label: (H, W) int64 -> ((3, h, w) float, (h, w) int64)."""
        scale = _uniform(generator, *self.scale_range)
        height, width = label.shape
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        if size != [height, width]:
            image = TF.resize(image, size, antialias=True)
            label = TF.resize(label[None], size, interpolation=TF.InterpolationMode.NEAREST)[0]
        image = self._jitter(image, generator)
        if float(torch.rand((), generator=generator)) < self.hflip:
            image, label = image.flip(-1), label.flip(-1)
        return self._crop(normalize(image, self.mean, self.std), label, generator)

    def _jitter(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        brightness, contrast, saturation, hue = self.color_jitter
        if brightness:
            image = TF.adjust_brightness(image, _uniform(generator, 1 - brightness, 1 + brightness))
        if contrast:
            image = TF.adjust_contrast(image, _uniform(generator, 1 - contrast, 1 + contrast))
        if saturation:
            image = TF.adjust_saturation(image, _uniform(generator, 1 - saturation, 1 + saturation))
        if hue:
            image = TF.adjust_hue(image, _uniform(generator, -hue, hue))
        return image

    def _crop(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        crop_h, crop_w = self.crop_size
        height, width = label.shape
        pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
            height, width = label.shape
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
        return (
            image[:, top : top + crop_h, left : left + crop_w],
            label[top : top + crop_h, left : left + crop_w],
        )
