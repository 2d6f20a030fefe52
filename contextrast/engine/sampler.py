"""Per-rank batches of an endless shuffled stream: the same batches whether a run was
resumed or not, and whatever the number of DataLoader workers."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from contextrast.config import ConfigError
from contextrast.data.datasets import sample_seed

__all__ = ["IterationBatchSampler"]


class IterationBatchSampler(Sampler[list[int]]):
    """Per-rank batches for iterations [start, total) of an endless shuffled stream.

    Epoch e is a permutation drawn from (seed, e); its k-th global batch is split evenly over
    the ranks. Indices carry the epoch (``e · len + i``) so that each sample's augmentation
    draw depends on (seed, epoch, index) even inside DataLoader workers, and a resumed run
    sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self, length: int, batch_size: int, rank: int, world: int, seed: int, start: int, total: int
    ):
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world
        self.seed, self.start, self.total = seed, start, total
        self.steps_per_epoch = length // (batch_size * world)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: the training set has {length} samples, fewer than the "
                f"global batch of {batch_size * world}"
            )

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        global_batch = self.batch_size * self.world
        epoch, order = -1, []
        for iteration in range(self.start, self.total):
            e, k = divmod(iteration, self.steps_per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(sample_seed(self.seed, e, 0, stream=3))
                epoch, order = e, torch.randperm(self.length, generator=g).tolist()
            first = k * global_batch + self.rank * self.batch_size
            yield [e * self.length + i for i in order[first : first + self.batch_size]]
