"""Encoder features of a model you already have, collected by forward hooks.

Models as people train them return logits only: torchvision's segmentation models (a dict
with ``out``), segmentation_models_pytorch's (a tensor), a timm backbone under a head of
your own. :class:`FeatureTap` hooks named submodules and hands their outputs of the model's
own forward pass to a contrastive loss, without editing the model::

    tap = FeatureTap(model)                      # a preset for the model's family, or
    tap = FeatureTap(model, ["backbone.layer1", "backbone.layer2", ...])
    loss = ContextrastLoss(num_classes, tap.channels(images[:2]))
    logits = model(images)["out"]                # the model's own forward
    loss(tap.features(), logits, target)         # the hooked outputs, lowest layer first
    tap.remove()                                 # nothing left on the model
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["FeatureTap", "preset_layers"]

#: "name[i]" taps item i of a module that returns a list or tuple (an smp encoder, a timm
#: ``features_only`` backbone), "name[key]" the value of a string key of a module that
#: returns a dict (torchvision's IntermediateLayerGetter: "backbone[out]"): several layers may
#: come from one module. The key may be quoted ("backbone['out']").
_ITEM = re.compile(r"^(?P<name>[^\[\]]*)\[(?P<item>[^\[\]]+)\]$")
_INDEX = re.compile(r"^-?\d+$")


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside DistributedDataParallel / DataParallel / torch.compile, and the
    prefix its submodules' names carry in the wrapper."""
    prefix = ""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model, prefix = model.module, prefix + "module."
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model, prefix = model._orig_mod, prefix + "_orig_mod."
        else:
            return model, prefix


def preset_layers(model: nn.Module) -> list[str]:
    """The four layers (strides 4, 8, 16, 32 or the deepest) that a contrastive loss takes,
    for the model families people train.

    - torchvision segmentation models (``deeplabv3_*``, ``fcn_*``, ``lraspp_*``): ResNet
      backbones ``backbone.layer1`` … ``backbone.layer4``; MobileNetV3 backbones the last
      block of each resolution (``backbone.3``, ``.6``, ``.12``, ``.16`` for -large);
    - segmentation_models_pytorch models: the last four items of ``encoder``'s feature list
      at strides 4 and up (item i has stride 2^i; with ``encoder_depth`` 3 or 4, the two or
      three there are: never the input image, item 0);
    - a timm ``features_only`` backbone (the model itself or a submodule, any family:
      ResNets, EfficientNets, MobileNetV3s, ViTs, Swins, …): the last four items of its
      feature list, or all it returns where fewer (a ViT's three); channels-last maps
      (timm's ``output_fmt`` NHWC, as Swin's) come out as (B, C, h, w).

    Raises ``ValueError`` naming what was found when the model is none of these.
    """
    inner, prefix = _unwrap(model)
    backbone = getattr(inner, "backbone", None)
    if backbone is not None and type(backbone).__name__ == "IntermediateLayerGetter":
        children = dict(backbone.named_children())
        if all(f"layer{i}" in children for i in range(1, 5)):
            return [f"{prefix}backbone.layer{i}" for i in range(1, 5)]
        names = list(children)
        # MobileNet: the block before each stride change (torchvision marks those "_is_cn")
        # ends a resolution; the last block ends the deepest one.
        ends = [names[i - 1] for i, n in enumerate(names) if getattr(children[n], "_is_cn", 0)]
        ends.append(names[-1])
        if len(ends) >= 4:
            return [f"{prefix}backbone.{name}" for name in ends[-4:]]
    encoder = getattr(inner, "encoder", None)
    if encoder is not None and hasattr(encoder, "out_channels") and hasattr(inner, "decoder"):
        # Item i of an smp encoder's list has stride 2^i; item 0 is the input image itself.
        # A shallower encoder (encoder_depth < 5) has fewer maps at strides 4 and up.
        depth = len(encoder.out_channels) - 1
        return [f"{prefix}encoder[{i}]" for i in range(max(2, depth - 3), depth + 1)]
    for name, module in [("", inner), *inner.named_modules()]:
        # timm's features_only models (FeatureListNet, and the EfficientNetFeatures /
        # MobileNetV3Features kinds that some families build instead) carry a FeatureInfo;
        # a classification model's feature_info is a plain list.
        if type(getattr(module, "feature_info", None)).__name__ == "FeatureInfo":
            at = f"{prefix}{name}" if name else prefix.rstrip(".")
            # its outputs: the out_indices' entries (a ViT lists 12 blocks, returns 3)
            count = len(module.feature_info.channels())
            return [f"{at}[{i}]" for i in range(-min(4, count), 0)]
    raise ValueError(
        f"no preset for {type(inner).__name__}: pass layers=[...] (the names of the four "
        "submodules whose outputs are the features, lowest layer first; "
        "FeatureTap.names(model) lists them)"
    )


class FeatureTap:
    """Collect the outputs of named submodules during a model's own forward pass.

    Args:
        model: any ``nn.Module`` (also wrapped in DistributedDataParallel or
            ``torch.compile``: hooks go on the inner modules).
        layers: a list of submodule names, lowest layer first (``model.named_modules()``
            names; ``"name[i]"`` takes item i of a module that returns a list or tuple,
            ``"name[key]"`` the value of key of a module that returns a dict). ``None``: the
            preset of the model's family (:func:`preset_layers`).

    Each forward of ``model`` first drops what the previous one left, then records the
    tapped outputs (with their graph: gradients reach the hooked layers). :meth:`features`
    hands them over and forgets them, so no step keeps another step's activations alive.
    The hooks add no parameter or buffer (``state_dict()`` is unchanged); :meth:`remove`
    (or leaving a ``with`` block) takes them off, and an exported or scripted inference
    model never sees them.

    A copy of the tapped model (``copy.deepcopy``, e.g. an EMA or teacher model) carries the
    hooks along, but they only record the modules this tap was built on: the copy's forward
    neither feeds nor clears this tap, and the copy has no active tap of its own (build
    ``FeatureTap(copy)`` for its features).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(layers, str):
            raise ValueError(
                f"layers must be a list of module names, got the string {layers!r}; "
                f"pass [{layers!r}]"
            )
        self.layers = list(preset_layers(model) if layers is None else layers)
        if not self.layers or not all(isinstance(n, str) for n in self.layers):
            raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
        modules = dict(model.named_modules())
        self._model = model
        self._outputs: dict[str, object] = {}
        self._handles = []
        self._removed = False
        # (module name, item: an index, a dict key or None) per layer, parsed once.
        self._parsed: list[tuple[str, int | str | None]] = []
        for layer in self.layers:
            match = _ITEM.match(layer)
            name, item = (match["name"], _item(match["item"])) if match else (layer, None)
            if name not in modules:
                raise ValueError(_unknown(name, modules))
            self._parsed.append((name, item))
        # timm returns some families' maps channels-last (Swin: output_fmt NHWC), on the
        # features_only wrapper or on the model whose stages are named by hand ("layers.0")
        self._channels_last = {name for name, _ in self._parsed if _channels_last(modules, name)}
        for name in dict.fromkeys(name for name, _ in self._parsed):
            self._handles.append(
                modules[name].register_forward_hook(self._recorder(name, modules[name]))
            )
        self._handles.append(model.register_forward_pre_hook(self._resetter(model)))

    @staticmethod
    def names(model: nn.Module) -> list[str]:
        """Every submodule name that ``layers`` may hold."""
        return [name for name, _ in model.named_modules() if name]

    # The hooks compare the module that calls them with the one they were put on: a deep
    # copy of the model shares these functions (deepcopy keeps functions as they are) but
    # calls them with its own modules, which then record nothing here.
    def _recorder(self, name: str, tapped: nn.Module):
        def record(module, inputs, output):
            if module is tapped:
                self._outputs[name] = output

        return record

    def _resetter(self, tapped: nn.Module):
        def reset(module, inputs) -> None:
            if module is tapped:
                self._outputs.clear()

        return reset

    def features(self) -> list[torch.Tensor]:
        """The tapped outputs of the last forward, lowest layer first, as (B, C, h, w)
        tensors; forgets them. Raises ``RuntimeError`` when no forward ran since the last
        call (or the tapped modules did not run) or the tap was removed."""
        if self._removed:
            raise RuntimeError(
                "this FeatureTap was removed (remove() or the end of its with block) and "
                "records nothing; create a new FeatureTap(model) to take features again"
            )
        out = []
        for layer, (name, item) in zip(self.layers, self._parsed):
            if name not in self._outputs:
                raise RuntimeError(
                    f"no output of {name!r} recorded: call the model before features() "
                    "(each forward's features can be taken once)"
                )
            value = self._outputs[name]
            if item is not None:
                value = _select(layer, name, value, item)
            if not isinstance(value, torch.Tensor) or value.dim() != 4:
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(f"layer {layer!r} gave {got}, expected a (B, C, h, w) tensor")
            if name in self._channels_last:
                value = value.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
            out.append(value)
        self._outputs.clear()
        return out

    @torch.no_grad()
    def channels(self, sample: torch.Tensor) -> list[int]:
        """The channels of the tapped features, from one forward of ``sample`` in eval mode
        (the model's train/eval mode and its BatchNorm statistics are left as they were)."""
        model = self._model
        training = model.training
        model.eval()
        try:
            model(sample)
            return [f.shape[1] for f in self.features()]
        finally:
            model.train(training)

    def remove(self) -> None:
        """Take every hook off the model and forget the recorded outputs; :meth:`features`
        then says the tap was removed."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs.clear()
        self._removed = True

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _channels_last(modules: dict[str, nn.Module], name: str) -> bool:
    """Whether the module ``name`` or one that holds it says its maps are (B, h, w, C)."""
    parts = name.split(".")
    holders = [".".join(parts[:k]) for k in range(len(parts), -1, -1)]  # itself, ..., root
    return any(
        str(getattr(modules.get(holder), "output_fmt", "")).endswith("NHWC") for holder in holders
    )


def _item(text: str) -> int | str:
    """The item of "name[item]": an int index, or a dict key (quotes, if any, stripped)."""
    if _INDEX.match(text):
        return int(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _select(layer: str, name: str, value: object, item: int | str) -> object:
    """Item ``item`` of the output ``value`` of module ``name``, or a one-line ValueError."""
    if isinstance(value, Mapping):
        key = str(item)  # "[0]" on a dict is the key "0" (torchvision's FPN backbones)
        if key not in value:
            raise ValueError(
                f"layer {layer!r}: {name!r} returned a dict without the key {key!r}; "
                f"its keys: {list(value)}"
            )
        return value[key]
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"layer {layer!r}: {name!r} returned a {type(value).__name__}, not a list, tuple "
            f"or dict; drop the [{item}]"
        )
    if not isinstance(item, int):
        raise ValueError(
            f"layer {layer!r}: {name!r} returned a {type(value).__name__}, which takes an "
            f"int index, not {item!r}"
        )
    if not -len(value) <= item < len(value):
        raise ValueError(
            f"layer {layer!r}: index {item} is out of range for the {len(value)} outputs of "
            f"{name!r} (a {type(value).__name__} of length {len(value)}; allowed "
            f"{-len(value)} to {len(value) - 1})"
        )
    return value[item]


def _unknown(name: str, modules: dict[str, nn.Module]) -> str:
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    shown = names if len(names) <= 40 else [n for n in names if "." not in n]
    hint = f"; close: {close}" if close else ""
    where = "available" if len(names) <= 40 else f"top-level ({len(names)} in all)"
    return f"unknown layer {name!r}{hint}; {where}: {shown}"
