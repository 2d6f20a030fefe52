"""Process-group setup for ``torchrun`` and SLURM's ``srun`` (gloo on CPU, nccl on CUDA),
and reductions."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_variable",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "first_host",
    "init_distributed",
    "slurm_environment",
]

#: The rendezvous port when neither MASTER_PORT nor the caller names one (torchrun's default).
DEFAULT_PORT = 29500


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


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[07-09,12],cpu3"`` → ``"gpu07"``."""
    first = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist.strip())
    if not nodelist.strip() or first is None or (not first.group(1) and not first.group(3)):
        raise ValueError(f"SLURM node list {nodelist!r}: expected e.g. 'node[01-04],gpu7'")
    prefix, ranges = first.group(1), first.group(3)
    if ranges is None:
        return prefix
    start = ranges.split(",")[0].split("-")[0]
    return prefix + start


def slurm_environment(environ: Mapping[str, str], port: int = DEFAULT_PORT) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) from SLURM's, for processes that ``srun`` started, one task per GPU, as
    mmsegmentation's ``--launcher slurm``: rank ``SLURM_PROCID``, world ``SLURM_NTASKS``,
    local rank ``SLURM_LOCALID``, master the first host of the job's node list (unless
    MASTER_ADDR is set), port MASTER_PORT or ``port``.

    Raises ``ValueError`` naming the missing variable outside a SLURM step.
    """
    needed = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    for name in needed:
        if not environ.get(name, "").isdigit():
            raise ValueError(
                f"--launcher slurm: {name} is {environ.get(name)!r}, expected a number; start "
                "each process with srun (one task per GPU)"
            )
    master = environ.get("MASTER_ADDR")
    if not master:
        nodes = next(
            (environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
             if environ.get(k)),
            None,
        )  # fmt: skip
        if nodes is None:
            raise ValueError("--launcher slurm: no SLURM_JOB_NODELIST and no MASTER_ADDR")
        master = first_host(nodes)
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    local_world = per_node if per_node.isdigit() else environ.get("SLURM_NTASKS")
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": local_world,
        "MASTER_ADDR": master,
        "MASTER_PORT": environ.get("MASTER_PORT") or str(port),
    }


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
