"""Datasets, paired transforms and data-loading helpers."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from contextrast.data.datasets import (
    ADE20K,
    CamVid,
    Cityscapes,
    CocoStuff,
    DatasetError,
    Folder,
    PascalContext,
    Sample,
    SegmentationDataset,
    inspect_image,
)
from contextrast.data.digits import Digits
from contextrast.data.inia19 import Inia19
from contextrast.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "DATASETS",
    "CheckReport",
    "DatasetError",
    "EvalTransform",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "build_dataset",
    "check_dataset",
    "class_pixels",
    "labelled_pixels",
    "seed_worker",
]

DATASETS: dict[str, type[SegmentationDataset]] = {
    "ade20k": ADE20K,
    "camvid": CamVid,
    "cityscapes": Cityscapes,
    "coco_stuff": CocoStuff,
    "digits": Digits,
    "folder": Folder,
    "inia19": Inia19,
    "pascal_context": PascalContext,
}


def build_dataset(name: str, **kwargs) -> SegmentationDataset:
    """``DATASETS[name](**kwargs)``; e.g. ``build_dataset("cityscapes", root=..., split="val")``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    try:
        return DATASETS[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"dataset {name!r}: {error}") from None


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's RNGs from torch's per-worker
    seed, for user code that draws from them (the library's transforms use torch only)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the legacy global RNG that user code uses


class CheckReport(NamedTuple):
    """samples: pairs found; problems: one message per problem; counts: per kind; notes:
    what reading does to some files that is not a problem (16-bit images, EXIF orientation),
    one line per kind with its count."""

    samples: int
    problems: list[str]
    counts: dict[str, int]
    notes: tuple[str, ...] = ()


def _kind(message: str) -> str:
    for needle, kind in (
        ("no label for image", "image without label"),
        ("no image for label", "label without image"),
        ("share the label", "two images for one label"),
        ("is missing", "listed image missing"),
        ("cannot read image", "unreadable image"),
        ("cannot read label", "unreadable label"),
        ("label map must be", "label not single-channel"),
        ("expected the same size", "size mismatch"),
        ("are not", "label values outside classes"),
        ("instance map", "instance map problem"),
        ("no image/label pairs", "empty split"),
        ("(ignore): nothing", "no labelled pixel"),
    ):
        if needle in message:
            return kind
    return "other"


def check_dataset(name: str, **kwargs) -> CheckReport:
    """Scan a dataset and collect every problem at once (instead of stopping at the first)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    dataset = DATASETS[name](strict=False, **kwargs)
    problems = list(dataset.problems)
    labelled = 0
    seen: Counter[str] = Counter()
    for index in range(len(dataset)):
        try:
            labelled += int((dataset.read(index)[1] != dataset.ignore_index).sum())
            dataset.read_instances(index)
            items = getattr(dataset, "items", ())
            if index < len(items):  # files on disk (digits draws its images)
                image = inspect_image(items[index].image)
                seen.update(sixteen_bit=image.sixteen_bit, rotated=image.rotated)
                seen.update(rotated_label=inspect_image(items[index].label).rotated)
        except DatasetError as error:
            problems.append(str(error))
    if len(dataset) and not labelled and not problems:
        problems.append(
            f"{name}: every label pixel of split {kwargs.get('split', 'train')!r} is "
            f"{dataset.ignore_index} (ignore): nothing to train on or evaluate"
        )
    counts = Counter(_kind(p) for p in problems)
    return CheckReport(len(dataset), problems, dict(counts), _notes(seen))


def _notes(seen: Counter[str]) -> tuple[str, ...]:
    """One line per conversion that reading applies, with its count."""

    def count(key: str, noun: str) -> str:
        n = seen[key]
        return f"{n} {noun}{'' if n == 1 else 's'} {'has' if n == 1 else 'have'}"

    notes = []
    if seen["sixteen_bit"]:
        notes.append(
            f"{count('sixteen_bit', 'image')} 16 bits per sample: read as 8 bits (the high "
            "byte, value >> 8)"
        )
    if seen["rotated"]:
        notes.append(
            f"{count('rotated', 'image')} an EXIF orientation: turned upright as viewers show "
            "them (labels must match the upright image)"
        )
    if seen["rotated_label"]:
        notes.append(
            f"{count('rotated_label', 'label map')} an EXIF orientation: not applied (label "
            "maps are read as stored)"
        )
    return tuple(notes)


def class_pixels(dataset: SegmentationDataset, workers: int = 4) -> list[int]:
    """Read every label file of ``dataset`` (not the images) and count each class's pixels
    (the training-pixel frequencies of the head / middle / tail split; their sum is the
    labelled pixels).

    Raises :class:`DatasetError` naming the first file whose values name no class, so that
    a bad label stops a run before its first iteration instead of at its first evaluation.
    """
    n = dataset.num_classes

    def count(index: int) -> np.ndarray:
        ids = np.asarray(dataset.read_label_ids(index)).ravel()
        return np.bincount(ids[ids != dataset.ignore_index], minlength=n)[:n]

    # Decoding PNGs releases the GIL: threads overlap the reads.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        total = sum(pool.map(count, range(len(dataset))), np.zeros(n, dtype=np.int64))
    return [int(v) for v in total]


def labelled_pixels(dataset: SegmentationDataset, workers: int = 4) -> int:
    """The labelled pixels of ``dataset`` (:func:`class_pixels` summed)."""
    return sum(class_pixels(dataset, workers))
