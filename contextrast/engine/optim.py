"""The optimiser: ``optim.name`` → a torch optimiser over parameter groups, as mmseg's
``paramwise_cfg`` makes them.

Every trainable parameter falls in one group by its role and its kind:

- role: ``encoder`` (the backbone and anything else of the model), ``head`` (the decode head
  and the auxiliary head: ``optim.head_lr_mult``), ``contrast`` (the contrastive loss's
  projection heads: ``optim.contrast_lr_mult``);
- kind: ``norm`` (weights and biases of normalisation layers: ``optim.norm_decay_mult``),
  ``bias`` (other biases: ``optim.bias_decay_mult``), ``weight`` (the rest).

The groups are fixed by the model, not by the multipliers' values, so that a resume with
other multipliers loads the optimiser's state group by group and applies the new values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from contextrast.config import Config, ConfigError, OptimConfig

__all__ = ["OPTIMIZERS", "apply_hyperparameters", "build_optimizer", "load_optimizer_state"]

#: ``optim.name`` → optimiser class.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
}
ROLES = ("encoder", "head", "contrast")
KINDS = ("weight", "bias", "norm")
NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _role(name: str) -> str:
    """``name``: a parameter's name in the :class:`TrainingModule` (``model.…``,
    ``contrast.…``)."""
    if name.startswith(("model.decode_head.", "model.aux_head.")):
        return "head"
    if name.startswith("contrast."):
        return "contrast"
    return "encoder"


def _groups(net: nn.Module) -> list[tuple[str, str, list[nn.Parameter]]]:
    """(role, kind, parameters) for each non-empty group, in a fixed order."""
    norm_params = {
        id(p) for m in net.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)
    }
    found: dict[tuple[str, str], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        kind = "norm" if id(param) in norm_params else "bias" if name.endswith("bias") else "weight"
        found.setdefault((_role(name), kind), []).append(param)
    return [(r, k, found[(r, k)]) for r in ROLES for k in KINDS if (r, k) in found]


def _multipliers(o: OptimConfig, role: str, kind: str) -> tuple[float, float]:
    """(learning-rate multiplier, weight-decay multiplier) of a group."""
    lr = {"encoder": 1.0, "head": o.head_lr_mult, "contrast": o.contrast_lr_mult}[role]
    decay = {"weight": 1.0, "bias": o.bias_decay_mult, "norm": o.norm_decay_mult}[kind]
    return lr, decay


def _hyperparameters(o: OptimConfig) -> dict[str, Any]:
    """The optimiser's own arguments beside lr and weight decay."""
    if o.name == "sgd":
        return {"momentum": o.momentum, "nesterov": o.nesterov}
    return {"betas": tuple(o.betas)}


def build_optimizer(config: Config, net: nn.Module) -> torch.optim.Optimizer:
    """The ``optim.name`` optimiser over ``net``'s parameter groups (module docstring).
    ``net``: the :class:`~contextrast.engine.step.TrainingModule` (not its DDP wrapper, whose
    parameter names carry a ``module.`` prefix)."""
    o = config.optim
    if o.name not in OPTIMIZERS:  # the config's type check lists them too
        raise ConfigError(
            f"optim.name: unknown optimiser {o.name!r}; choose from {list(OPTIMIZERS)}"
        )
    groups = []
    for role, kind, params in _groups(net):
        lr_mult, decay_mult = _multipliers(o, role, kind)
        groups.append({
            "params": params, "role": role, "kind": kind, "lr_mult": lr_mult,
            "lr": o.lr * lr_mult, "weight_decay": o.weight_decay * decay_mult,
        })  # fmt: skip
    return OPTIMIZERS[o.name](groups, lr=o.lr, **_hyperparameters(o))


def apply_hyperparameters(optimizer: torch.optim.Optimizer, o: OptimConfig) -> None:
    """Set every group's hyper-parameters from ``o`` (a resume with a changed config): the
    weight decay with its multiplier, the optimiser's own arguments, and ``lr_mult`` (the
    schedule multiplies the base lr by it)."""
    for group in optimizer.param_groups:
        lr_mult, decay_mult = _multipliers(o, group["role"], group["kind"])
        group.update(lr_mult=lr_mult, weight_decay=o.weight_decay * decay_mult)
        group.update(_hyperparameters(o))


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], order: list[nn.Parameter]
) -> None:
    """Load a saved optimiser state. A checkpoint written before the parameter groups
    (one group of ``order``, the training module's parameters in their order) is mapped
    onto the groups parameter by parameter, so that its momentum carries on."""
    saved_groups = state["param_groups"]
    if len(saved_groups) == 1 and "role" not in saved_groups[0]:
        old_index = {id(p): i for i, p in enumerate(order)}
        current = optimizer.state_dict()
        new_index = [p for group in optimizer.param_groups for p in group["params"]]
        saved = state["state"]
        current["state"] = {
            i: saved[old_index[id(p)]] for i, p in enumerate(new_index) if old_index[id(p)] in saved
        }
        state = current
    optimizer.load_state_dict(state)
