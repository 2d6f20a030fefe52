"""Learning-rate schedule: poly decay with a linear warm-up."""

from __future__ import annotations

import torch

__all__ = ["PolyLR"]


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base · (1 − it/total)^power``, times a linear warm-up factor from
    ``warmup_ratio`` to 1 over the first ``warmup_iters`` iterations."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        power: float = 0.9,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.1,
    ):
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer)

    def factor(self, iteration: int) -> float:
        poly = max(0.0, 1.0 - iteration / self.total_iters) ** self.power
        if iteration < self.warmup_iters:
            poly *= self.warmup_ratio + (1 - self.warmup_ratio) * iteration / self.warmup_iters
        return poly

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def reset(self, base_lr: float, total_iters: int, power: float, warmup_iters: int,
              warmup_ratio: float, iteration: int) -> list[float]:  # fmt: skip
        """Continue at ``iteration`` on a new curve (a resume with a changed schedule): sets
        every group's base (``base_lr`` times the group's ``lr_mult``, 1 where it has none)
        and current lr; returns the current lrs."""
        self.total_iters, self.power = total_iters, power
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio
        self.base_lrs = [base_lr * g.get("lr_mult", 1.0) for g in self.optimizer.param_groups]
        self.last_epoch = iteration
        lrs = self.get_lr()
        for group, base, lr in zip(self.optimizer.param_groups, self.base_lrs, lrs):
            group.update(initial_lr=base, lr=lr)
        self._last_lr = lrs
        return lrs
