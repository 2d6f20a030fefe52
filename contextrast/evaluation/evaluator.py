"""Accumulating evaluator: confusion matrices (whole, boundary bands and object-size
buckets), Cityscapes iIoU.

Every statistic is a sum, so per-rank evaluators reduce with one ``all_reduce`` each.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from contextrast.data import DatasetError
from contextrast.evaluation.inference import predict_probabilities
from contextrast.evaluation.metrics import (
    OBJECT_SIZES,
    boundary_distance,
    check_object_sizes,
    confusion_matrix,
    frequency_miou,
    mean_iou,
    object_size_buckets,
    pixel_accuracy,
    pixel_counts,
)
from contextrast.models import Segmentor
from contextrast.utils.distributed import all_reduce_sum

__all__ = ["CITYSCAPES_AVG_CLASS_SIZE", "Evaluator", "evaluate"]

#: cityscapesScripts' average instance size per class (pixels), the iIoU weights.
CITYSCAPES_AVG_CLASS_SIZE = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}


def _nanmean(values: list[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else float("nan")


class Evaluator:
    """Accumulates predictions against ground truth.

    Args:
        class_names: the N class names.
        ignore_index: unlabelled value.
        boundary_widths: widths (px) of the boundary-mIoU bands (Table 4).
        instance_classes: train ids with instances, for iIoU (Cityscapes: 11–18).
        train_to_label: train id → dataset label id (Cityscapes: instance ids are
            ``labelId · 1000 + k``).
        categories: category name per class (Cityscapes' category mIoU / iIoU).
        avg_class_size: iIoU weight numerator per class name.
        class_pixels: (N,) training pixels per class; given, :meth:`compute` adds
            ``frequency_miou``: the mIoU of the head / middle / tail thirds by training-pixel
            frequency (Contextrast++'s Table IV).
        object_sizes: three side lengths (px) s₀ < s₁ < s₂: :meth:`compute` adds
            ``size_miou``, the mIoU of tiny (area ≤ s₀²), small (≤ s₁²), medium (≤ s₂²) and
            large objects (Contextrast++'s Table V), an object being a connected region of
            one class in the ground truth (8-connected,
            :func:`~contextrast.evaluation.metrics.object_size_buckets`). As the boundary
            mIoU scores a band, each size scores its objects' pixels only: a false positive
            of class c is a pixel of another class's object of that size predicted c.
            Empty: off.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int = 255,
        boundary_widths: Sequence[int] = (5, 7, 10),
        instance_classes: Sequence[int] = (),
        train_to_label: Sequence[int] = (),
        categories: Sequence[str] = (),
        avg_class_size: dict[str, float] | None = None,
        class_pixels: Sequence[int] | None = None,
        object_sizes: Sequence[int] = (16, 32, 96),
    ):
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index
        self.boundary_widths = list(boundary_widths)
        self.object_sizes = check_object_sizes(object_sizes)
        self.instance_classes = list(instance_classes)
        self.train_to_label = list(train_to_label)
        self.categories = list(categories)
        self.avg_class_size = avg_class_size or CITYSCAPES_AVG_CLASS_SIZE
        if class_pixels is not None:
            try:
                counts = pixel_counts(class_pixels)
            except ValueError:
                counts = None
            if counts is None or len(counts) != len(self.class_names):
                raise ValueError(
                    f"class_pixels must be {len(self.class_names)} ints >= 0 (training pixels "
                    f"per class: a list, an array or a tensor), got {reprlib.repr(class_pixels)}"
                )
            class_pixels = counts
        # thirds of fewer than three classes would hold nothing: no thirds then
        enough = class_pixels is not None and len(class_pixels) >= 3
        self.class_pixels = [int(v) for v in class_pixels] if enough else None
        n = self.num_classes
        self.confusion = torch.zeros(n, n, dtype=torch.int64)
        self.boundary = torch.zeros(len(self.boundary_widths), n, n, dtype=torch.int64)
        buckets = len(OBJECT_SIZES) if self.object_sizes else 0
        self.size = torch.zeros(buckets, n, n, dtype=torch.int64)
        category_names = sorted(set(self.categories), key=self.categories.index)
        self.category_names = category_names
        # Weighted TP / FN per class and per category (float64 sums).
        self.instance_tp = torch.zeros(n, dtype=torch.float64)
        self.instance_fn = torch.zeros(n, dtype=torch.float64)
        self.category_tp = torch.zeros(len(category_names), dtype=torch.float64)
        self.category_fn = torch.zeros(len(category_names), dtype=torch.float64)
        self.images = torch.zeros((), dtype=torch.int64)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, instances: torch.Tensor | None = None
    ) -> None:
        """pred, target: (B, H, W) (or (H, W)); instances: same shape, dataset instance ids."""
        # int64: the ignore value and the class ids fit whatever the label dtype (int8 too)
        pred, target = pred.cpu(), target.cpu().long()
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
            instances = None if instances is None or instances.numel() == 0 else instances[None]
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.boundary_widths:
            distance = boundary_distance(target, max(self.boundary_widths))
        for i, width in enumerate(self.boundary_widths):
            band = distance <= width
            banded = torch.where(band, target, torch.full_like(target, self.ignore_index))
            self.boundary[i] += confusion_matrix(pred, banded, self.num_classes, self.ignore_index)
        if self.object_sizes:
            buckets = object_size_buckets(target, self.object_sizes, self.ignore_index)
            for k in range(len(OBJECT_SIZES)):
                sized = torch.where(buckets == k, target, self.ignore_index)
                self.size[k] += confusion_matrix(pred, sized, self.num_classes, self.ignore_index)
        if instances is not None and instances.numel() and self.instance_classes:
            self._update_instances(pred, instances.cpu())
        self.images += pred.shape[0]

    def _update_instances(self, pred: torch.Tensor, instances: torch.Tensor) -> None:
        label_to_train = {label: train for train, label in enumerate(self.train_to_label)}
        category_index = {name: i for i, name in enumerate(self.category_names)}
        for ids in instances.unique().tolist():
            if ids <= 1000:  # cityscapesScripts: only ids > 1000 are instances
                continue
            train = label_to_train.get(ids // 1000)
            if train is None or train not in self.instance_classes:
                continue
            mask = instances == ids
            size = int(mask.sum())
            weight = self.avg_class_size[self.class_names[train]] / size
            tp = int((pred[mask] == train).sum())
            self.instance_tp[train] += tp * weight
            self.instance_fn[train] += (size - tp) * weight
            if self.categories:
                category = self.categories[train]
                members = [c for c, name in enumerate(self.categories) if name == category]
                in_category = int(torch.isin(pred[mask], torch.tensor(members)).sum())
                self.category_tp[category_index[category]] += in_category * weight
                self.category_fn[category_index[category]] += (size - in_category) * weight

    def reduce(self) -> None:
        """Sum every statistic over ranks (no-op on one process)."""
        for tensor in (
            self.confusion,
            self.boundary,
            self.size,
            self.instance_tp,
            self.instance_fn,
            self.category_tp,
            self.category_fn,
            self.images,
        ):
            all_reduce_sum(tensor)

    def compute(self) -> dict[str, Any]:
        iou, miou = mean_iou(self.confusion)
        result: dict[str, Any] = {
            "images": int(self.images),
            "pixel_accuracy": pixel_accuracy(self.confusion),
            "miou": miou,
            "iou": {name: float(v) for name, v in zip(self.class_names, iou.tolist())},
            "boundary_miou": {
                str(w): mean_iou(self.boundary[i]).miou for i, w in enumerate(self.boundary_widths)
            },
        }
        if self.object_sizes:
            result["size_miou"] = {
                name: mean_iou(self.size[k]).miou for k, name in enumerate(OBJECT_SIZES)
            }
        if self.class_pixels is not None:
            result["frequency_miou"] = frequency_miou(iou.tolist(), self.class_pixels)
        if self.instance_classes:
            result["iiou"] = self._iiou()
        if self.categories:
            result.update(self._category_scores())
        return result

    def _false_positives(self, columns: list[int], exclude_rows: list[int]) -> float:
        rows = [r for r in range(self.num_classes) if r not in exclude_rows]
        return float(self.confusion[rows][:, columns].sum())

    def _iiou(self) -> float:
        scores = []
        for c in self.instance_classes:
            tp, fn = float(self.instance_tp[c]), float(self.instance_fn[c])
            fp = self._false_positives([c], [c])
            denominator = tp + fp + fn
            # As cityscapesScripts: NaN only when nothing at all is counted for the class.
            scores.append(tp / denominator if denominator > 0 else float("nan"))
        return _nanmean(scores)

    def _category_scores(self) -> dict[str, float]:
        category_iou, category_iiou = [], []
        for k, name in enumerate(self.category_names):
            members = [c for c, cat in enumerate(self.categories) if cat == name]
            tp = float(self.confusion[members][:, members].sum())
            fn = float(self.confusion[members].sum()) - tp
            fp = self._false_positives(members, members)
            denominator = tp + fp + fn
            category_iou.append(tp / denominator if denominator > 0 else float("nan"))
            if any(c in self.instance_classes for c in members):
                wtp, wfn = float(self.category_tp[k]), float(self.category_fn[k])
                denominator = wtp + fp + wfn
                category_iiou.append(wtp / denominator if denominator > 0 else float("nan"))
        return {"category_miou": _nanmean(category_iou), "category_iiou": _nanmean(category_iiou)}


def evaluate(
    model: Segmentor,
    dataset: Dataset,
    evaluator: Evaluator,
    device: torch.device,
    *,
    max_images: int | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
    **protocol: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` with one test protocol (``protocol``: the keyword
    arguments of :func:`~contextrast.evaluation.inference.predict_probabilities`); ranks split
    the images and their statistics are summed.

    Raises :class:`~contextrast.data.DatasetError` when the evaluated images have no labelled
    pixel (no score is defined), instead of returning NaN.
    """
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    shard = Subset(dataset, list(range(rank, count, world)))
    loader = DataLoader(
        shard,
        batch_size=1,
        num_workers=num_workers,
        # Its own generator: worker seeds drawn from the global RNG would shift training's.
        generator=torch.Generator().manual_seed(0),
    )
    was_training = model.training
    model.eval()
    forward = model.inference()
    with torch.no_grad():
        for sample in loader:
            probabilities = predict_probabilities(forward, sample.image.to(device), **protocol)
            instances = sample.instances if sample.instances.numel() else None
            evaluator.update(probabilities.argmax(1), sample.label, instances)
    evaluator.reduce()
    model.train(was_training)
    if not bool(evaluator.confusion.sum() > 0):
        name = getattr(dataset, "name", type(dataset).__name__)
        ignore = getattr(dataset, "ignore_index", 255)
        raise DatasetError(
            f"{name}: the {count} evaluated images have no labelled pixel (every label "
            f"pixel is {ignore}, ignore): no score is defined"
        )
    return evaluator.compute()
