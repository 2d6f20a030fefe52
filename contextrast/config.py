"""Run configuration: typed sections, strict keys, ``--set key=value`` overrides.

Only the CLI and the factories read configs; components take plain keyword arguments. A
config file is complete on its own (no inheritance); every key has a type, and a wrong key or
value is a one-line ``ConfigError`` naming it and what is allowed.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from contextrast.contrast import (
    ContextrastLoss,
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
    RegionLoss,
)

__all__ = [
    "CONFIG_DIR",
    "Config",
    "ConfigError",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "packaged_configs",
    "resolve_config",
]


class ConfigError(ValueError):
    """A wrong key or value in a config; the message names it and what is allowed."""


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    deterministic: bool = False


@dataclass
class ModelConfig:
    name: str = "hrnetv2_w18_small"
    #: False, True (timm's ImageNet weights; needs internet) or a local state-dict path
    pretrained: bool | str = False
    #: DeepLab's FCN auxiliary head
    aux: bool = False
    #: weight of the auxiliary CE (OCR's soft regions, DeepLab's FCN head)
    aux_weight: float = 0.4
    head: str | None = None
    head_width: int | None = None
    #: ImageNet mean/std unless the pretrained weights were trained otherwise
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DataConfig:
    dataset: str = "digits"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    #: extra keyword arguments of the dataset class (e.g. label_type, num_classes, length)
    options: dict[str, Any] = field(default_factory=dict)
    crop_size: list[int] = field(default_factory=lambda: [512, 1024])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: float = 0.5
    color_jitter: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.0])
    #: global batch size, split evenly over the processes
    batch_size: int = 8
    num_workers: int = 4
    #: read every label file of both splits before training (bad values, no labelled pixel)
    check_labels: bool = True


#: Constructor arguments that the model, the dataset or the trainer decide, not a config
#: (``validate``: the trainer checks labels once and watches the loss on the device).
NOT_CONFIG = ("num_classes", "in_channels", "ignore_index", "loss", "validate")


def loss_section(name: str, *constructors: type, **extra: tuple[Any, Any]) -> type:
    """A config section whose keys, types and defaults are the constructor arguments of
    ``constructors`` (one source of truth: a default lives in its constructor), plus
    ``extra`` keys as ``name=(type, default)``."""
    fields: list[tuple[str, Any, Any]] = []
    for cls in constructors:
        hints = typing.get_type_hints(cls.__init__)
        for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if parameter.name in NOT_CONFIG:
                continue
            default = parameter.default
            if isinstance(default, (list, tuple)):
                default = field(default_factory=lambda value=default: list(value))
            fields.append((parameter.name, hints[parameter.name], default))
    fields += [(key, tp, default) for key, (tp, default) in extra.items()]
    return dataclasses.make_dataclass(name, fields)


ContrastConfig = loss_section("ContrastConfig", ContextrastLoss)
#: ``memory: true`` wraps the loss in :class:`PixelContrastMemory` (queue_size,
#: pixels_per_class).
PixelContrastConfig = loss_section(
    "PixelContrastConfig", PixelContrastLoss, PixelContrastMemory, memory=(bool, False)
)
MultiScaleConfig = loss_section("MultiScaleConfig", MultiScaleCrossScaleLoss)
RegionContrastConfig = loss_section("RegionContrastConfig", RegionContrastLoss)
#: the region term on the logits (Lovász, Dice, Jaccard), added to CE with any ``loss.name``
RegionConfig = loss_section("RegionConfig", RegionLoss)


@dataclass
class LossConfig:
    #: the contrastive term added to CE; "ce" is the baseline (``contextrast losses`` lists them)
    name: Literal["ce", "contextrast", "pixel_contrast", "ms_cs", "region_contrast"] = "contextrast"
    #: iterations before the contrastive term is switched on
    contrast_warmup_iters: int = 0
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    pixel_contrast: PixelContrastConfig = field(default_factory=PixelContrastConfig)
    ms_cs: MultiScaleConfig = field(default_factory=MultiScaleConfig)
    region_contrast: RegionContrastConfig = field(default_factory=RegionContrastConfig)
    region: RegionConfig = field(default_factory=RegionConfig)


@dataclass
class OptimConfig:
    #: the optimiser (``contextrast.engine.optim.OPTIMIZERS``)
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    #: SGD's momentum; ``nesterov``: Nesterov's form (as nnU-Net trains)
    momentum: float = 0.9
    nesterov: bool = False
    #: AdamW's (β1, β2)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0005
    #: weight-decay multipliers of normalisation parameters and of other biases (mmseg's
    #: paramwise_cfg norm_decay_mult / bias_decay_mult; 0: no decay on them)
    norm_decay_mult: float = 1.0
    bias_decay_mult: float = 1.0
    #: learning-rate multipliers of the decode (and auxiliary) head and of the contrastive
    #: loss's projection heads
    head_lr_mult: float = 1.0
    contrast_lr_mult: float = 1.0
    iters: int = 40000
    power: float = 0.9
    #: linear warm-up iterations, from ``lr · warmup_ratio`` to ``lr``
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: float | None = None
    #: compile the model with torch.compile: false, true (inductor) or a backend name; the
    #: contrastive loss runs eagerly beside it (data-dependent shapes would break its graph)
    compile: bool | str = False


@dataclass
class TrainConfig:
    log_interval: int = 50
    eval_interval: int = 4000
    checkpoint_interval: int = 2000
    #: keep an exponential moving average of the weights (timm's ModelEmaV3, its decay
    #: warm-up 1 − (1 + t)^−2/3 capped at this value) and report and deploy it; null: off
    ema_decay: float | None = None


@dataclass
class EvalConfig:
    mode: Literal["whole", "slide"] = "whole"
    crop_size: list[int] = field(default_factory=lambda: [512, 1024])
    stride: list[int] = field(default_factory=lambda: [341, 682])
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    boundary_widths: list[int] = field(default_factory=lambda: [5, 7, 10])
    #: side lengths (px) of tiny / small / medium objects for the object-size mIoU ([]: off)
    object_sizes: list[int] = field(default_factory=lambda: [16, 32, 96])
    #: evaluate at most this many validation images (None: all)
    max_images: int | None = None


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return f"one of {list(typing.get_args(tp))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, collections.abc.Sequence):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin in (list, collections.abc.Sequence):
        (inner,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {where!r}; allowed: {names}")
    values = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, data[name], key)
        else:
            values[name] = _coerce(data[name], tp, key)
    return cls(**values)


def _check(config: Config) -> Config:
    """Cross-field checks that types alone cannot express."""
    checks = [
        (
            "run.name",
            config.run.name.strip() not in ("", ".", "..")
            and config.run.name == config.run.name.strip()
            and not set("/\\\0") & set(config.run.name),
            f"{config.run.name!r} must be one folder name (no '/', '\\', NUL, '.', '..' or "
            "spaces around it); "
            "run.output_dir sets where it goes",
        ),
        ("optim.iters", config.optim.iters >= 1, "must be >= 1"),
        ("optim.lr", 0 < config.optim.lr < math.inf, "must be finite and > 0"),
        ("optim.momentum", 0 <= config.optim.momentum < 1, "must be in [0, 1)"),
        (
            "optim.nesterov",
            not config.optim.nesterov or (config.optim.name == "sgd" and config.optim.momentum > 0),
            "needs optim.name=sgd and optim.momentum > 0",
        ),
        (
            "optim.betas",
            len(config.optim.betas) == 2 and all(0 <= b < 1 for b in config.optim.betas),
            "must be [beta1, beta2], each in [0, 1)",
        ),
        # a value the chosen optimiser never reads would be silently ignored
        (
            "optim.momentum",
            config.optim.name == "sgd" or config.optim.momentum == OptimConfig.momentum,
            f"is SGD's (default {OptimConfig.momentum}); AdamW's momentum is optim.betas[0]",
        ),
        (
            "optim.betas",
            config.optim.name == "adamw" or list(config.optim.betas) == OptimConfig().betas,
            f"are AdamW's (default {OptimConfig().betas}); SGD's momentum is optim.momentum",
        ),
        *(
            (f"optim.{key}", 0 <= getattr(config.optim, key) < math.inf, "must be finite and >= 0")
            for key in (
                "weight_decay",
                "norm_decay_mult",
                "bias_decay_mult",
                "head_lr_mult",
                "contrast_lr_mult",
            )
        ),
        ("data.batch_size", config.data.batch_size >= 1, "must be >= 1"),
        ("data.crop_size", len(config.data.crop_size) == 2, "must be [height, width]"),
        ("eval.crop_size", len(config.eval.crop_size) == 2, "must be [height, width]"),
        ("eval.stride", len(config.eval.stride) == 2, "must be [height, width]"),
        ("eval.crop_size", min(config.eval.crop_size, default=1) >= 1, "must be >= 1 pixel"),
        ("eval.stride", min(config.eval.stride, default=1) >= 1, "must be >= 1 pixel"),
        ("eval.scales", len(config.eval.scales) >= 1, "must list at least one scale"),
        ("train.log_interval", config.train.log_interval >= 1, "must be >= 1"),
        ("train.eval_interval", config.train.eval_interval >= 1, "must be >= 1"),
        ("train.checkpoint_interval", config.train.checkpoint_interval >= 1, "must be >= 1"),
        (
            "train.ema_decay",
            config.train.ema_decay is None or 0 < config.train.ema_decay < 1,
            "must be in (0, 1) or null",
        ),
        ("data.hflip", 0 <= config.data.hflip <= 1, "must be in [0, 1]"),
        ("data.num_workers", config.data.num_workers >= 0, "must be >= 0"),
        ("run.seed", 0 <= config.run.seed < 2**32, "must be in [0, 2**32)"),
        ("optim.power", 0 <= config.optim.power < math.inf, "must be finite and >= 0"),
        ("optim.warmup_iters", config.optim.warmup_iters >= 0, "must be >= 0"),
        ("optim.warmup_ratio", 0 <= config.optim.warmup_ratio <= 1, "must be in [0, 1]"),
        ("model.aux_weight", 0 <= config.model.aux_weight < math.inf, "must be finite and >= 0"),
        ("loss.contrast_warmup_iters", config.loss.contrast_warmup_iters >= 0, "must be >= 0"),
        (
            "loss.contrast.stop_step",
            config.loss.name != "contextrast"
            or config.loss.contrast.stop_step is None
            or config.loss.contrast_warmup_iters < config.loss.contrast.stop_step,
            f"must be above loss.contrast_warmup_iters ({config.loss.contrast_warmup_iters}): "
            "the term would never be on",
        ),
        (
            "loss.contrast.stop_step",
            config.loss.name != "contextrast"
            or config.loss.contrast.stop_step is None
            or config.loss.contrast.stop_step < config.optim.iters,
            f"must be below optim.iters ({config.optim.iters}) or null (never stop): the term "
            "would never stop",
        ),
        (
            "loss.region.weight",
            math.isfinite(config.loss.region.weight) and config.loss.region.weight >= 0,
            "must be a finite number >= 0",
        ),
        (
            "eval.scales",
            all(0 < s < math.inf for s in config.eval.scales),
            "must all be finite and > 0",
        ),
        ("eval.boundary_widths", all(w >= 1 for w in config.eval.boundary_widths), "must be >= 1"),
        (
            "eval.object_sizes",
            config.eval.object_sizes == []
            or (
                len(config.eval.object_sizes) == 3
                and 1 <= config.eval.object_sizes[0] < config.eval.object_sizes[1]
                and config.eval.object_sizes[1] < config.eval.object_sizes[2] <= 2**16
            ),
            "must be three increasing side lengths in [1, 65536] (px) or []",
        ),
        (
            "eval.max_images",
            config.eval.max_images is None or config.eval.max_images >= 1,
            "must be >= 1 or null",
        ),
        (
            "model.mean",
            len(config.model.mean) == 3 and all(math.isfinite(v) for v in config.model.mean),
            "must be 3 finite values (R, G, B)",
        ),
        (
            "model.std",
            len(config.model.std) == 3 and all(0 < v < math.inf for v in config.model.std),
            "must be 3 values (R, G, B), each finite and > 0",
        ),
        (
            "model.head_width",
            config.model.head_width is None or config.model.head_width >= 1,
            "must be >= 1 or null",
        ),
        (
            "optim.grad_clip",
            config.optim.grad_clip is None or config.optim.grad_clip > 0,
            "must be > 0 or null",
        ),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"{key}: {message}")
    if isinstance(config.optim.compile, str):
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if config.optim.compile not in backends:
            raise ConfigError(
                f"optim.compile: unknown backend {config.optim.compile!r}; use true, false or "
                f"one of {backends}"
            )
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    return _check(_build(Config, data, ""))


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-4`` is a float (as in YAML 1.2, JSON
    and Python), not the string PyYAML makes of a float without a dot."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _mapping_without_repeats(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": construct_mapping merges
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:  # YAML would keep the last silently; the first is as likely meant
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                key_node.start_mark,
            )  # fmt: skip
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def read_yaml(text: str) -> Any:
    """Parse config text (a file's, or one ``--set`` value's)."""
    return yaml.load(text, Loader=_Loader)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node, cls, prefix = data, Config, ""
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)] if cls else None
        key = f"{prefix}.{part}" if prefix else part
        if names is not None and part not in names:
            raise ConfigError(f"unknown key {key!r}; allowed: {names}")
        if i == len(parts) - 1:
            node[part] = value
            return
        hint = typing.get_type_hints(cls)[part] if cls else None
        cls = hint if hint is not None and dataclasses.is_dataclass(hint) else None
        if cls is None and not (hint is not None and typing.get_origin(hint) is dict):
            raise ConfigError(f"{key} is not a section; cannot set {dotted!r}")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {node!r} is not a section (a mapping of keys)")
        prefix = key


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` strings applied; values are parsed as YAML
    (``0.02``, ``[512, 512]``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.02")
        key, raw = item.split("=", 1)
        try:
            value = read_yaml(raw)
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return data


#: The configs that ship with the package (``contextrast configs`` lists them).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """The names of the packaged configs, e.g. ``cityscapes/hrnetv2_w48_contextrast.yaml``."""
    return sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.glob("*/*.yaml"))


def resolve_config(path: str | os.PathLike) -> Path:
    """A config file: ``path`` itself, or else the packaged config of that name (with or
    without a leading ``configs/``), so that configs work from any folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; name a .yaml file")
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    packaged = CONFIG_DIR.joinpath(*parts) if parts and not path.is_absolute() else None
    if packaged is not None and packaged.is_file():
        return packaged
    raise ConfigError(
        f"config file {path} not found (nor a packaged config of that name; "
        "`contextrast configs` lists them)"
    )


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a file, or a packaged config's name), apply overrides, validate.
    Errors name the file and the key."""
    path = resolve_config(path)
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        detail = f" ({problem})" if problem else ""
        raise ConfigError(f"{path}{where}: not valid YAML{detail}") from None
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(
            f"{path}: the file is {what}; expected sections (run, model, data, loss, optim, "
            "train, eval) as in the packaged configs (`contextrast configs` lists them)"
        )
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
