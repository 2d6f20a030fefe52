"""Factories that read a :class:`~contextrast.config.Config` (only they and the CLI do)."""

from __future__ import annotations

from typing import Any

from contextrast.config import Config, ConfigError
from contextrast.contrast import ContextrastLoss
from contextrast.data import DATASETS, EvalTransform, SegmentationDataset, TrainTransform
from contextrast.evaluation.evaluator import Evaluator
from contextrast.models import Segmentor, create_model

__all__ = ["LOSSES", "build_contrast", "build_dataset", "build_evaluator", "build_model"]

#: ``loss.name`` → contrastive loss class (None: cross-entropy only).
LOSSES: dict[str, type | None] = {"ce": None, "contextrast": ContextrastLoss}


def build_dataset(config: Config, split: str, train: bool) -> SegmentationDataset:
    data = config.data
    if data.dataset not in DATASETS:
        raise ConfigError(
            f"data.dataset: unknown dataset {data.dataset!r}; choose from {sorted(DATASETS)}"
        )
    cls = DATASETS[data.dataset]
    if train:
        transform: Any = TrainTransform(
            crop_size=data.crop_size,
            scale_range=data.scale_range,
            hflip=data.hflip,
            color_jitter=data.color_jitter,
            mean=config.model.mean,
            std=config.model.std,
        )
        if data.hflip > 0 and not cls.flip_invariant:
            raise ConfigError(
                f"data.hflip: must be 0 for {data.dataset} (mirroring changes its classes)"
            )
    else:
        transform = EvalTransform(mean=config.model.mean, std=config.model.std)
    kwargs = dict(data.options)
    if data.dataset != "digits":
        if not data.root:
            raise ConfigError(f"data.root: required for dataset {data.dataset!r}")
        kwargs["root"] = data.root
    if data.dataset == "cityscapes" and not train:
        kwargs.setdefault("return_instances", True)
    try:
        return cls(split=split, transform=transform, seed=config.run.seed, **kwargs)
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None


def build_model(config: Config, num_classes: int, pretrained: bool = True) -> Segmentor:
    """``pretrained=False`` skips loading weights (e.g. when a checkpoint follows)."""
    m = config.model
    kwargs: dict[str, Any] = {}
    if m.aux:
        kwargs["aux"] = True
    if m.name.startswith("tu-"):
        if m.head is not None:
            kwargs["head"] = m.head
        if m.head_width is not None:
            kwargs["head_width"] = m.head_width
    elif m.head is not None or m.head_width is not None:
        raise ConfigError("model.head / model.head_width: only for 'tu-<timm name>' models")
    return create_model(m.name, num_classes, m.pretrained if pretrained else False, **kwargs)


def build_contrast(config: Config, num_classes: int, channels: list[int]) -> ContextrastLoss | None:
    name = config.loss.name
    if name not in LOSSES:
        raise ConfigError(f"loss.name: unknown loss {name!r}; choose from {sorted(LOSSES)}")
    cls = LOSSES[name]
    if cls is None:
        return None
    c = config.loss.contrast
    if len(c.layer_weights) != len(channels):
        raise ConfigError(
            f"loss.contrast.layer_weights: {len(c.layer_weights)} weights for a model with "
            f"{len(channels)} feature maps"
        )
    return cls(
        num_classes,
        channels,
        embed_dim=c.embed_dim,
        temperature=c.temperature,
        layer_weights=c.layer_weights,
        w_high=c.w_high,
        bane_ratio=c.bane_ratio,
        loss_weight=c.loss_weight,
        ignore_index=255,
        max_pixels=c.max_pixels,
        hard_negatives=c.hard_negatives,
        detach_anchors=c.detach_anchors,
        normalize_anchors=c.normalize_anchors,
    )


def build_evaluator(config: Config, dataset: SegmentationDataset) -> Evaluator:
    return Evaluator(
        dataset.classes,
        dataset.ignore_index,
        boundary_widths=config.eval.boundary_widths,
        instance_classes=getattr(dataset, "instance_classes", ()),
        train_to_label=getattr(dataset, "train_to_label", ()),
        categories=getattr(dataset, "categories", ()),
    )
