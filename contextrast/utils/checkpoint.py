"""Atomic checkpoints, loaded with ``weights_only=True``, and RNG state capture."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TEMPORARY_SUFFIX = ".tmp"

__all__ = [
    "capture_rng",
    "load_checkpoint",
    "load_error",
    "load_weights",
    "remove_stale_temporaries",
    "restore_rng",
    "save_checkpoint",
]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a kill at
    any moment leaves either the previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writes (``kill -9``, pre-emption) left in
    ``folder``: ``.NAME.PID.tmp`` whose process is gone. Returns the removed paths."""
    removed = []
    for path in Path(folder).glob(f".*.pt.*{TEMPORARY_SUFFIX}"):
        pid = path.name[: -len(TEMPORARY_SUFFIX)].rpartition(".")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def load_error(error: Exception) -> str:
    """``torch.load``'s error as a short clause: its type and first sentence (torch's own
    messages run to paragraphs of advice on ``weights_only``)."""
    first = " ".join(str(error).split()).split(". ")[0]
    return f"{type(error).__name__}: {first[:120]}{'...' if len(first) > 120 else ''}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load on the CPU with ``weights_only=True`` (no arbitrary pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file gets the same one-line message
        raise ValueError(
            f"checkpoint {path}: not a readable contextrast checkpoint ({load_error(error)})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"checkpoint {path}: missing 'model' or 'config'; not a contextrast run")
    return state


def load_weights(module: nn.Module, weights: dict[str, Any], path: str | os.PathLike, what: str):
    """``module.load_state_dict(weights)`` with a one-line ``ValueError`` naming the first
    difference instead of PyTorch's multi-line report."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        if shapes:
            k = shapes[0]
            detail = f"{k} is {tuple(weights[k].shape)} there, {tuple(own[k].shape)} here"
        elif missing:
            detail = f"{len(missing)} weights missing there, first {missing[0]}"
        else:
            detail = f"{len(unexpected)} weights unknown here, first {unexpected[0]}"
        raise ValueError(
            f"checkpoint {path}: its {what} weights do not fit the {what} this config builds "
            f"({detail})"
        )
    module.load_state_dict(weights)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every RNG a training step may draw from, in types that ``weights_only`` accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))  # noqa: NPY002
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
