"""Factories that read a :class:`~contextrast.config.Config` (only they and the CLI do)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from contextrast.config import Config, ConfigError, DataConfig
from contextrast.contrast import ContextrastLoss, RegionLoss
from contextrast.contrast.peers import (
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
)
from contextrast.data import DATASETS, EvalTransform, SegmentationDataset, TrainTransform
from contextrast.evaluation.evaluator import Evaluator
from contextrast.models import GENERIC_PREFIX, MODELS, Segmentor, create_model

__all__ = [
    "LOSSES",
    "LOSS_DESCRIPTIONS",
    "build_contrast",
    "build_evaluator",
    "build_model",
    "build_region",
    "build_split",
    "check_buildable",
    "eval_options",
    "predict_options",
]

#: ``loss.name`` → (what it is, the paper's reference).
LOSS_DESCRIPTIONS = {
    "ce": "cross-entropy only (the baseline rows of Table 2)",
    "contextrast": "CCL + BANE, Sung et al. (this paper); negatives=semi_hard / bane_ratio=0 "
    "for the Table 6 ablations",
    "pixel_contrast": "pixel contrast, Wang et al. ICCV21 [41]; memory=true for its memory bank",
    "ms_cs": "multi-scale + cross-scale contrast, Pissas et al. ECCV22 [31]",
    "region_contrast": "region-aware contrast, Hu et al. ICCV21 [17]",
}


def build_split(config: Config, split: str, train: bool) -> SegmentationDataset:
    """The ``data.dataset`` split ``split`` with the config's transform: training
    augmentations when ``train``, else the evaluation one. (``contextrast.data.build_dataset``
    is the config-free constructor by dataset name.)"""
    data = config.data
    if data.dataset not in DATASETS:
        raise ConfigError(
            f"data.dataset: unknown dataset {data.dataset!r}; choose from {sorted(DATASETS)}"
        )
    cls = DATASETS[data.dataset]
    if train:
        try:
            transform: Any = TrainTransform(
                crop_size=data.crop_size,
                scale_range=data.scale_range,
                hflip=data.hflip,
                color_jitter=data.color_jitter,
                mean=config.model.mean,
                std=config.model.std,
            )
        except ValueError as error:  # its messages name its arguments: data.<argument>
            raise ConfigError(f"data.{error}") from None
        if data.hflip > 0 and not cls.flip_invariant:
            # a config without a data section lands here: say where "digits" came from
            unset = data.dataset == DataConfig.dataset and data.root is None
            hint = "; data.dataset defaults to digits: set it (and data.root) for your data"
            raise ConfigError(
                f"data.hflip: must be 0 for {data.dataset} (mirroring changes its classes)"
                + (hint if unset else "")
            )
    else:
        transform = EvalTransform(mean=config.model.mean, std=config.model.std)
    kwargs = dict(data.options)
    if not cls.builtin:
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
    generic = m.name.startswith(GENERIC_PREFIX)
    if not generic and m.name not in MODELS:
        raise ConfigError(
            f"model.name: unknown model {m.name!r}; choose from {sorted(MODELS)} or "
            f"'{GENERIC_PREFIX}<timm backbone>'"
        )
    kwargs: dict[str, Any] = {}
    if m.aux:
        kwargs["aux"] = True
    if generic:
        if m.head is not None:
            kwargs["head"] = m.head
        if m.head_width is not None:
            kwargs["head_width"] = m.head_width
    elif m.head is not None or m.head_width is not None:
        raise ConfigError(
            f"model.head / model.head_width: only for '{GENERIC_PREFIX}<timm name>' models; "
            f"the preset {m.name!r} fixes its head (set both to null)"
        )
    return create_model(m.name, num_classes, m.pretrained if pretrained else False, **kwargs)


#: ``loss.name`` → (loss class, its config section under ``loss.``).
LOSSES: dict[str, tuple[type[nn.Module], str]] = {
    "contextrast": (ContextrastLoss, "contrast"),
    "pixel_contrast": (PixelContrastLoss, "pixel_contrast"),
    "ms_cs": (MultiScaleCrossScaleLoss, "ms_cs"),
    "region_contrast": (RegionContrastLoss, "region_contrast"),
}


def build_contrast(config: Config, num_classes: int, channels: list[int]) -> nn.Module | None:
    """The contrastive loss module of ``loss.name`` (None for "ce"), built from its config
    section as keyword arguments; the constructor validates them and a bad value is a
    ``ConfigError`` naming the section."""
    name = config.loss.name
    if name not in LOSS_DESCRIPTIONS:
        raise ConfigError(
            f"loss.name: unknown loss {name!r}; choose from {sorted(LOSS_DESCRIPTIONS)}"
        )
    if name == "ce":
        return None
    cls, section = LOSSES[name]
    kwargs = dataclasses.asdict(getattr(config.loss, section))
    try:
        if name == "pixel_contrast":
            memory = kwargs.pop("memory")
            queue = {key: kwargs.pop(key) for key in ("queue_size", "pixels_per_class")}
            loss = cls(num_classes, channels, **kwargs)
            return PixelContrastMemory(loss, **queue) if memory else loss
        return cls(num_classes, channels, **kwargs)
    except ValueError as error:
        raise ConfigError(f"loss.{section}: {error}") from None


def unused_loss_settings(config: Config) -> list[str]:
    """The ``loss.<section>.<key>=<value>`` settings away from their defaults in the
    sections of the losses ``loss.name`` does not build: they change nothing, and a user who
    set one should be told (the generated configs restate every section at its defaults)."""
    found = []
    for name, (_, section) in LOSSES.items():
        if name == config.loss.name:
            continue
        values = getattr(config.loss, section)
        defaults = dataclasses.asdict(type(values)())
        for key, value in dataclasses.asdict(values).items():
            if value != defaults[key]:
                found.append(f"loss.{section}.{key}={value!r}")
    return found


def build_region(config: Config) -> RegionLoss | None:
    """The region term of ``loss.region`` (None when its name is "none")."""
    kwargs = dataclasses.asdict(config.loss.region)
    if kwargs["name"] == "none":
        return None
    try:
        return RegionLoss(**kwargs)
    except (ValueError, ImportError) as error:
        raise ConfigError(f"loss.region: {error}") from None


def build_evaluator(
    config: Config, dataset: SegmentationDataset, class_pixels: Sequence[int] | None = None
) -> Evaluator:
    """``class_pixels``: the training split's pixels per class, for the head / middle /
    tail mIoU (:func:`~contextrast.data.class_pixels`)."""
    return Evaluator(
        dataset.classes,
        dataset.ignore_index,
        boundary_widths=config.eval.boundary_widths,
        object_sizes=config.eval.object_sizes,
        instance_classes=getattr(dataset, "instance_classes", ()),
        train_to_label=getattr(dataset, "train_to_label", ()),
        categories=getattr(dataset, "categories", ()),
        class_pixels=class_pixels,
    )


def predict_options(config: Config) -> dict[str, Any]:
    """The keyword arguments of
    :func:`~contextrast.evaluation.inference.predict_probabilities` that ``config.eval`` sets
    (the test protocol: mode, crop, stride, scales, flip)."""
    e = config.eval
    return {
        "mode": e.mode,
        "crop": e.crop_size,
        "stride": e.stride,
        "scales": e.scales,
        "flip": e.flip,
    }


def eval_options(config: Config) -> dict[str, Any]:
    """The keyword arguments of :func:`~contextrast.evaluation.evaluator.evaluate` that the
    config sets: the test protocol, ``eval.max_images`` and the loader's workers."""
    return {
        **predict_options(config),
        "max_images": config.eval.max_images,
        "num_workers": min(2, config.data.num_workers),
    }


def check_buildable(config: Config, num_classes: int) -> None:
    """Build the model (on the meta device: no weights, no memory), its losses and the
    optimiser as training will: a value only a constructor checks (``loss.contrast.*``)
    raises its one-line :class:`ConfigError` here, before anything slow (the label scan,
    the pretrained weights, the first step)."""
    from contextrast.engine.optim import build_optimizer
    from contextrast.engine.step import TrainingModule

    with torch.device("meta"):
        model = build_model(config, num_classes, pretrained=False)
        contrast = build_contrast(config, num_classes, model.feature_channels)
        net = TrainingModule(model, contrast, config.model.aux_weight, region=build_region(config))
        build_optimizer(config, net)
