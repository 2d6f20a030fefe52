"""Multi-scale encoders on timm backbones, and loading of local pretrained weights."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from contextrast.utils.checkpoint import load_error

__all__ = ["TimmEncoder", "load_state_dict_file"]

# Wrappers that training scripts commonly put around a backbone's keys.
_KEY_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file gets the same one-line message
        raise ValueError(
            f"pretrained weights {path}: not a readable PyTorch state dict ({load_error(error)})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"pretrained weights {path}: expected a dict of tensors (a state dict), got "
            f"{type(obj).__name__}"
        )
    state = dict(obj)
    for prefix in _KEY_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict_file(module: nn.Module, path: str | os.PathLike, what: str = "model") -> None:
    """Load a local state dict into ``module`` by key name, ignoring the file's extra keys.

    Accepts a plain state dict or one under ``"state_dict"`` / ``"model"``, with an optional
    ``module.`` / ``backbone.`` / ``encoder.`` / ``model.`` prefix on every key; timm and
    torchvision key names match timm's backbones. Loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, or a key of ``module`` missing from the file or of
            another shape; the message names the path and the first such keys.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = module.state_dict()
    # Old torchvision checkpoints predate BatchNorm's counter; BatchNorm fills it in.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, {what} {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} keys missing from the file, first {missing[:5]}")
        if mismatched:
            problems.append(f"{len(mismatched)} keys of another shape, first {mismatched[:3]}")
        raise ValueError(f"pretrained weights {path} do not fit the {what}: {'; '.join(problems)}")
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)


class TimmEncoder(nn.Module):
    """A timm backbone as a list of feature maps, lowest layer first.

    Args:
        name: timm model name (``timm.list_models()``); must support ``features_only``.
        pretrained: False, True (timm downloads its ImageNet weights: needs internet), or the
            path of a local state dict with timm / torchvision key names.
        out_indices: timm feature levels to return (default: the last ``num_features``).
        num_features: how many levels when ``out_indices`` is not given.
        output_stride: 8 or 16 dilates the last stages (ResNets, as DeepLabV3 does).

    HRNets return their raw branch outputs (``feature_location=''``), not timm's
    classification "incre" features.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool | str | os.PathLike = False,
        out_indices: Sequence[int] | None = None,
        num_features: int = 4,
        output_stride: int | None = None,
    ):
        super().__init__()
        if name not in timm.list_models():
            raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models()")
        kwargs: dict = {"features_only": True, "pretrained": pretrained is True}
        kwargs["out_indices"] = (
            tuple(out_indices) if out_indices is not None else tuple(range(-num_features, 0))
        )
        if name.startswith("hrnet"):
            kwargs["feature_location"] = ""
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        try:
            self.body = timm.create_model(name, **kwargs)
        except (TypeError, RuntimeError, AssertionError, IndexError) as error:
            raise ValueError(
                f"timm backbone {name!r} cannot give features with {kwargs}: {error}"
            ) from None
        self.name = name
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        if pretrained is not True and pretrained is not False and pretrained is not None:
            load_state_dict_file(self.body, pretrained, what=f"backbone {name}")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 3, H, W) -> [(B, C_i, H/s_i, W/s_i)], lowest layer first."""
        return list(self.body(images))
