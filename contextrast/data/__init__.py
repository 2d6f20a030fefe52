"""Datasets, paired transforms and data-loading helpers."""

from __future__ import annotations

import random
from collections import Counter
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
    """samples: pairs found; problems: one message per problem; counts: per kind."""

    samples: int
    problems: list[str]
    counts: dict[str, int]


def _kind(message: str) -> str:
    for needle, kind in (
        ("no label for image", "image without label"),
        ("is missing", "listed image missing"),
        ("cannot read image", "unreadable image"),
        ("cannot read label", "unreadable label"),
        ("label map must be", "label not single-channel"),
        ("expected the same size", "size mismatch"),
        ("are not", "label values outside classes"),
        ("instance map", "instance map problem"),
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
    for index in range(len(dataset)):
        try:
            dataset.read(index)
            dataset.read_instances(index)
        except DatasetError as error:
            problems.append(str(error))
    counts = Counter(_kind(p) for p in problems)
    return CheckReport(len(dataset), problems, dict(counts))
