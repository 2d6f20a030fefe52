"""Cached index tensors and 0-dim constants that no caller can corrupt (a caller that edits
one in place gets it rebuilt).

Internal: the fast path of :func:`contextrast.functional.contextrast_loss`; each piece names
the reference it equals (:mod:`contextrast.functional.reference`) and is tested against it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = [
    "constant",
    "tensor_cache",
]


_T = TypeVar("_T")


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in ``value`` (a tensor, or nested tuples / NamedTuples holding some)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def tensor_cache(maxsize: int) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """``functools.lru_cache`` for functions that return tensors, safe against callers.

    A cached tensor is shared by every later call, so an in-place edit by one caller would
    corrupt them all. Each entry keeps its tensors' version counters (bumped by every in-place
    operation); a hit whose tensors changed is rebuilt. The check reads Python attributes
    only: no tensor operation, no host synchronisation. Entries are built outside inference
    mode, so a cache first filled during evaluation still serves training. (Edits that
    bypass autograd's version counter, through ``.data`` or a NumPy view, are not seen.)
    """

    def decorate(build: Callable[..., _T]) -> Callable[..., _T]:
        entries: OrderedDict = OrderedDict()

        @functools.wraps(build)
        def cached(*args):
            entry = entries.get(args)
            if entry is not None:
                value, versions = entry
                if [t._version for t in _tensors(value)] == versions:
                    entries.move_to_end(args)
                    return value
            with torch.inference_mode(False):
                value = build(*args)
            entries[args] = (value, [t._version for t in _tensors(value)])
            entries.move_to_end(args)
            if len(entries) > maxsize:
                entries.popitem(last=False)
            return value

        cached.cache_clear = entries.clear
        cached.cache_size = lambda: len(entries)
        cached.uncached = build
        return cached

    return decorate


# --------------------------------------------------------------------------------------------
# I layers as one flat axis: the loss works on every layer's pixels at once
# --------------------------------------------------------------------------------------------


@tensor_cache(maxsize=256)
def constant(value: float | int | tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached tensor of ``value`` (a number: 0-dim): an operand that, unlike a Python
    number, costs no conversion per operation (the loss is counted in operator calls)."""
    return torch.tensor(value, dtype=dtype, device=device)


@tensor_cache(maxsize=64)
def _arange(size: int, device: torch.device) -> torch.Tensor:
    """A cached ``torch.arange(size)`` (int64)."""
    return torch.arange(size, device=device)
