"""Contextrast++'s learned anchor fusion: the parameters of its fusion modules (the math is
:mod:`contextrast.functional.fusion`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from contextrast.functional.fusion import FusionWeights

__all__ = ["AnchorFusion"]


class AnchorFusion(nn.Module):
    """The I − 1 fusion modules M_1 … M_{I−1} of Contextrast++ (eq. 3 of its text), each a
    self-attention F over one anchor's channels and an MLP ``Linear(2d, h) → GELU →
    Linear(h, d)``, stacked so that one batched product runs them all.

    Training-only, as the projection heads: it lives in the loss, not in the model.

    Args:
        layers: I − 1, the lower layers (one module each).
        dim: d.
        hidden: h (default d).
        zero_out: the MLP's last layer starts at 0, so the modules start by adding nothing
            (the residual reading: training starts from Contextrast's fixed fusion).
    """

    def __init__(self, layers: int, dim: int, hidden: int | None = None, zero_out: bool = False):
        super().__init__()
        hidden = dim if hidden is None else hidden
        shapes = {
            "query": (dim, dim),
            "key": (dim, dim),
            "value": (dim, dim),
            "hidden": (hidden, 2 * dim),
            "hidden_bias": (hidden,),
            "out": (dim, hidden),
            "out_bias": (dim,),
        }
        fan_in = {"hidden_bias": 2 * dim, "out_bias": hidden}
        for name, shape in shapes.items():
            # nn.Linear's initialisation: U(−1/√fan_in, 1/√fan_in), fan_in its input width
            bound = 1.0 / math.sqrt(fan_in.get(name, shape[-1]))
            param = nn.Parameter(torch.empty(layers, *shape).uniform_(-bound, bound))
            if zero_out and name in ("out", "out_bias"):
                param.data.zero_()
            self.register_parameter(name, param)

    def weights(self) -> FusionWeights:
        """The parameters as the functional form takes them."""
        return FusionWeights(*(getattr(self, name) for name in FusionWeights._fields))

    def extra_repr(self) -> str:
        layers, hidden, two_d = self.hidden.shape
        return f"layers={layers}, dim={two_d // 2}, hidden={hidden}"
