"""Per-class memory queues for the contrastive losses that contrast against past batches."""

from __future__ import annotations

import torch
from torch import nn

from contextrast.utils.distributed import all_gather_variable

__all__ = ["ClassQueue"]


class ClassQueue(nn.Module):
    """A ring buffer of ``size`` entries per class, as module buffers (saved in checkpoints).

    ``push`` writes each class's new keys at its pointer and advances the pointer by the
    number written (the pixel-contrast public code advanced it by one whatever was written).

    Args:
        num_classes: N.
        size: entries per class (Q).
        dim: key dimension (D).
    """

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("keys", torch.zeros(num_classes, size, dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[1]

    @torch.no_grad()
    def push(self, keys: torch.Tensor, labels: torch.Tensor, gather: bool = True) -> None:
        """keys: (K, D) detached embeddings; labels: (K,) their classes. With ``gather``, the
        keys of every rank are pushed on every rank (queues stay identical under DDP)."""
        if gather:
            keys, labels = all_gather_variable(keys), all_gather_variable(labels)
        keys = keys.to(self.keys.dtype)
        for c in torch.unique(labels).tolist():
            new = keys[labels == c][-self.size :]  # (k, D); only the newest fit
            k = new.shape[0]
            slots = (int(self.pointer[c]) + torch.arange(k, device=new.device)) % self.size
            self.keys[c, slots] = new
            self.pointer[c] = (self.pointer[c] + k) % self.size
            self.count[c] = min(self.size, int(self.count[c]) + k)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys (T, D), labels (T,)) of the filled entries."""
        filled = torch.arange(self.size, device=self.keys.device).unsqueeze(
            0
        ) < self.count.unsqueeze(1)
        labels = (
            torch.arange(self.keys.shape[0], device=self.keys.device).unsqueeze(1).expand_as(filled)
        )
        return self.keys[filled], labels[filled]

    @torch.no_grad()
    def push_rows(self, keys: torch.Tensor, present: torch.Tensor) -> None:
        """At most one key per class, without a host synchronisation: row c of ``keys``
        (N, D) goes into class c's queue where ``present`` (N,) bool says so. Every process
        must push the same keys for the queues to stay identical under DDP (Contextrast's
        global anchors are). A row with a NaN or inf is not pushed: a caller that skips a
        bad batch keeps a clean memory."""
        n, _, d = self.keys.shape
        if not (torch.is_tensor(keys) and tuple(keys.shape) == (n, d)):
            got = tuple(keys.shape) if torch.is_tensor(keys) else type(keys).__name__
            raise ValueError(f"push_rows: keys must have shape (N, D) = {(n, d)}, got {got}")
        if not (torch.is_tensor(present) and present.dtype == torch.bool and present.shape == (n,)):
            got = f"{present.dtype} {tuple(present.shape)}" if torch.is_tensor(present) else present
            raise ValueError(f"push_rows: present must be a bool tensor of shape ({n},), got {got}")
        present = present & torch.isfinite(keys).all(dim=1)  # on the device: no host sync
        rows = torch.arange(n, device=self.keys.device)
        slot = self.keys[rows, self.pointer]  # (N, D): what the pointer's slot holds now
        self.keys[rows, self.pointer] = torch.where(
            present.unsqueeze(1), keys.to(self.keys.dtype), slot
        )
        step = present.long()
        self.pointer.add_(step).remainder_(self.size)
        self.count.add_(step).clamp_(max=self.size)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every slot, a fixed shape (no host synchronisation): keys (N·size, D) and their
        labels (N·size,), −1 for a slot not yet written."""
        slots = torch.arange(self.size, device=self.keys.device)
        filled = slots.unsqueeze(0) < self.count.unsqueeze(1)  # (N, size)
        classes = torch.arange(self.keys.shape[0], device=self.keys.device).unsqueeze(1)
        labels = torch.where(filled, classes, torch.full_like(classes, -1))  # (N, size)
        return self.keys.flatten(0, 1), labels.flatten()
