"""Process-group setup for ``torchrun`` (gloo on CPU, nccl on CUDA) and reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_variable",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "init_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Read torchrun's environment; start the process group when there are several ranks.

    device: "cpu" or "cuda" (each rank takes the GPU of its LOCAL_RANK).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        try:
            torch.cuda.set_device(torch_device)
        except (RuntimeError, AssertionError) as error:  # no driver, no such GPU
            first = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(
                f"run.device: 'cuda' (GPU {local}) is not usable here: {first}"
            ) from None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return DistInfo(rank, world, local, torch_device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; a no-op on one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a (K, ...) tensor over ranks, K may differ per rank; a copy on one process.

    Sizes are gathered first, every rank pads to the largest, and the padding is cut again,
    so it works with gloo and nccl alike.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.clone()
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    largest = int(max(int(s) for s in sizes))
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s)] for g, s in zip(gathered, sizes)])
