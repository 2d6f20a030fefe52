"""Process-group setup for ``torchrun`` and SLURM's ``srun`` (gloo on CPU, nccl on CUDA),
and reductions.

The launch variables are checked before anything waits on another process (a bad one is a
one-line ``ValueError`` naming it, its value and what is allowed), and the first contact
between the processes waits at most ``CONTEXTRAST_DIST_TIMEOUT`` seconds (default 300) in
short Python-level steps, so SIGTERM and SIGINT end a process still waiting for its peers.

Only the standard library and torch are imported here (tests load this file on its own).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_VARIABLE",
    "DistInfo",
    "Launch",
    "RendezvousError",
    "all_gather_variable",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "expand_nodelist",
    "first_host",
    "init_distributed",
    "read_environment",
    "slurm_environment",
    "sum_across_processes",
]

#: The rendezvous port when neither MASTER_PORT nor the caller names one (torchrun's default).
DEFAULT_PORT = 29500
#: Seconds the first contact between the processes may take (all of them connected to
#: MASTER_ADDR:MASTER_PORT); ``CONTEXTRAST_DIST_TIMEOUT`` changes it. Collectives afterwards
#: keep torch's own timeout.
DEFAULT_TIMEOUT = 300.0
TIMEOUT_VARIABLE = "CONTEXTRAST_DIST_TIMEOUT"
#: Seconds between two looks at the rendezvous: signals are handled between them.
_POLL = 0.2
_KEY = "contextrast/rendezvous/"


class RendezvousError(ValueError):
    """The processes did not all meet: a timeout, a port already taken, a lost master.

    A ``ValueError``, as a bad launch variable is, so the command line reports it in one line.
    """


@dataclass(frozen=True)
class Launch:
    """The checked launch variables (torchrun's names)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None
    master_addr: str | None
    master_port: int | None
    timeout: float


def _count(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    """The integer in ``environ[name]`` (None when unset), at least ``minimum`` (0 or 1)."""
    value = environ.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+", value) or int(value) < minimum:
        kind = "a positive integer" if minimum else "a non-negative integer"
        raise ValueError(f"{name}={value!r}: expected {kind}")
    return int(value)


def read_environment(environ: Mapping[str, str]) -> Launch:
    """Check torchrun's variables and ``CONTEXTRAST_DIST_TIMEOUT`` before any rendezvous.

    RANK, LOCAL_RANK (default 0) and WORLD_SIZE, LOCAL_WORLD_SIZE (default 1, unchecked) must
    be integers with RANK < WORLD_SIZE, LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE (LOCAL_RANK
    < WORLD_SIZE without LOCAL_WORLD_SIZE). With more than one process RANK must be set,
    MASTER_ADDR be a host name, MASTER_PORT a port from 1 to 65535 and the timeout a positive
    number of seconds. Raises ``ValueError`` naming the first bad variable and its value.
    """
    world_set = _count(environ, "WORLD_SIZE", 1)
    world = 1 if world_set is None else world_set
    rank = _count(environ, "RANK", 0)
    local = _count(environ, "LOCAL_RANK", 0) or 0
    local_world = _count(environ, "LOCAL_WORLD_SIZE", 1)
    unset = "" if world_set is not None else " (WORLD_SIZE is not set)"
    if rank is None and world > 1:
        raise ValueError(
            f"RANK is not set but WORLD_SIZE={world}: expected this process's rank, 0 to "
            f"{world - 1} (start the processes with torchrun, or srun and --launcher slurm)"
        )
    rank = rank or 0
    if rank >= world:
        raise ValueError(f"RANK={rank} must be below WORLD_SIZE={world}{unset}")
    if local_world is not None and local_world > world:
        raise ValueError(f"LOCAL_WORLD_SIZE={local_world} must not exceed WORLD_SIZE={world}")
    if local_world is not None and local >= local_world:
        raise ValueError(f"LOCAL_RANK={local} must be below LOCAL_WORLD_SIZE={local_world}")
    if local >= world:
        raise ValueError(f"LOCAL_RANK={local} must be below WORLD_SIZE={world}{unset}")
    if world == 1:  # one process: no rendezvous, the rest is unused
        return Launch(rank, world, local, local_world, None, None, DEFAULT_TIMEOUT)
    addr = environ.get("MASTER_ADDR")
    if addr is None:
        raise ValueError(
            f"MASTER_ADDR is not set but WORLD_SIZE={world}: expected the host of RANK=0"
        )
    if not addr or re.search(r"\s", addr):
        raise ValueError(f"MASTER_ADDR={addr!r}: expected the host name or address of RANK=0")
    port = environ.get("MASTER_PORT")
    if port is None:
        raise ValueError(
            f"MASTER_PORT is not set but WORLD_SIZE={world}: expected a port from 1 to 65535"
        )
    if not re.fullmatch(r"[0-9]+", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"MASTER_PORT={port!r}: expected a port from 1 to 65535")
    timeout = environ.get(TIMEOUT_VARIABLE)
    seconds = DEFAULT_TIMEOUT
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(
                f"{TIMEOUT_VARIABLE}={timeout!r}: expected a positive number of seconds "
                f"(default {DEFAULT_TIMEOUT:g})"
            )
    return Launch(rank, world, local, local_world, addr, int(port), seconds)


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

    The variables are checked first (``read_environment``); the processes then meet at
    MASTER_ADDR:MASTER_PORT within ``CONTEXTRAST_DIST_TIMEOUT`` seconds or a
    ``RendezvousError`` says who waited for whom.
    """
    launch = read_environment(os.environ)
    world, rank, local = launch.world_size, launch.rank, launch.local_rank
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
        store = _rendezvous(launch)
        dist.init_process_group(
            backend="nccl" if device == "cuda" else "gloo", store=store, rank=rank, world_size=world
        )
        store.set_timeout(dist.constants.default_pg_timeout)  # later store use: torch's timeout
    return DistInfo(rank, world, local, torch_device)


def _reason(error: BaseException) -> str:
    """The first line of an error, for a one-line message."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text[:1].lower() + text[1:]


def _rendezvous(launch: Launch) -> dist.Store:
    """A store every process reached, once all WORLD_SIZE of them did (as torch's ``env://``:
    RANK 0 serves a TCPStore on MASTER_PORT, or torchrun's agent does).

    Waits in Python-level steps of ``_POLL`` seconds, so signal handlers run while it waits,
    and at most ``launch.timeout`` seconds in all.
    """
    addr, port, rank, world = launch.master_addr, launch.master_port, launch.rank, launch.world_size
    assert addr is not None and port is not None
    seconds = launch.timeout
    deadline = time.monotonic() + seconds
    where = f"MASTER_ADDR:MASTER_PORT={addr}:{port}"
    longer = f"raise {TIMEOUT_VARIABLE} (seconds, default {DEFAULT_TIMEOUT:g}) to wait longer"
    span = timedelta(seconds=seconds)
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun serves it
    if rank == 0 and not agent:
        try:  # an unknown host would leave the store retrying for minutes in C++
            socket.getaddrinfo(addr, port)
        except socket.gaierror as error:
            raise RendezvousError(
                f"MASTER_ADDR={addr!r}: unknown host ({_reason(error.strerror or str(error))})"
            ) from None
        try:
            store = dist.TCPStore(
                addr, port, world, is_master=True, timeout=span, wait_for_workers=False,
                multi_tenant=True,
            )  # fmt: skip
        except dist.DistError as error:
            cause = re.search(r"message: (.*)", str(error))
            raise RendezvousError(
                f"MASTER_PORT={port}: RANK=0 cannot serve the rendezvous on it "
                f"({cause.group(1) if cause else _reason(error)}); choose a free port"
            ) from None
    else:
        last = "no answer"
        while True:  # until something listens there: a client store would log every retry
            left = deadline - time.monotonic()
            if left <= 0:
                raise RendezvousError(
                    f"rendezvous timed out after {seconds:g} s: RANK={rank} could not reach "
                    f"{where} ({last}); is RANK=0 of WORLD_SIZE={world} running there? "
                    f"{longer[0].upper()}{longer[1:]}"
                )
            try:
                with socket.create_connection((addr, port), timeout=min(1.0, left)):
                    break
            except socket.gaierror as error:
                last = _reason(error.strerror or str(error))
                if error.errno == socket.EAI_NONAME:
                    raise RendezvousError(f"MASTER_ADDR={addr!r}: unknown host ({last})") from None
            except OSError as error:
                last = _reason(error.strerror or str(error) or type(error).__name__)
            time.sleep(min(_POLL, max(deadline - time.monotonic(), 0)))
        try:
            store = dist.TCPStore(
                addr, port, world, is_master=False,
                timeout=timedelta(seconds=max(deadline - time.monotonic(), 1.0)),
            )  # fmt: skip
        except dist.DistError as error:
            raise RendezvousError(f"RANK={rank} could not join {where}: {_reason(error)}") from None
    try:
        if store.add(f"{_KEY}rank{rank}", 1) > 1:
            raise RendezvousError(
                f"RANK={rank}: another process at {where} has the same RANK; give each of the "
                f"WORLD_SIZE={world} processes its own, 0 to {world - 1}"
            )
        if store.add(f"{_KEY}arrived", 1) == world:
            store.set(f"{_KEY}ready", "1")
        while not store.check([f"{_KEY}ready"]):  # store.wait would log each short timeout
            if time.monotonic() >= deadline:
                arrived = store.add(f"{_KEY}arrived", 0)
                raise RendezvousError(
                    f"rendezvous timed out after {seconds:g} s: {arrived} of WORLD_SIZE={world} "
                    f"processes reached {where} (this is RANK={rank}); start the others or "
                    f"{longer}"
                )
            time.sleep(_POLL)
    except dist.DistError as error:
        raise RendezvousError(
            f"RANK={rank} lost {where} while waiting for the other processes: {_reason(error)}"
        ) from None
    store.set_timeout(timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
    return store


_NODE_TEXT = re.compile(r"[A-Za-z0-9._-]+")


def _parse_nodelist(nodelist: str, name: str) -> list[list[str | list[tuple[int, int, int]]]]:
    """SLURM's host list syntax: hosts separated by commas, each of text and bracketed
    ranges (``[01-03,07]``, zero padding kept). One list of parts per host pattern."""
    text = nodelist.strip()

    def malformed(reason: str) -> ValueError:
        return ValueError(
            f"{name}={nodelist!r}: malformed host list ({reason}); expected e.g. "
            "'node[01-03,07],gpu7'"
        )

    if not text:
        raise malformed("empty")
    hosts: list[list[str | list[tuple[int, int, int]]]] = []
    parts: list[str | list[tuple[int, int, int]]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if not parts:
                raise malformed(f"empty host name at position {i}")
            hosts.append(parts)
            parts = []
            i += 1
        elif char == "[":
            close = text.find("]", i)
            if close < 0:
                raise malformed(f"'[' at position {i} is not closed")
            inner = text.find("[", i + 1)
            if 0 <= inner < close:
                raise malformed(f"'[' at position {inner} inside brackets")
            ranges = []
            for piece in text[i + 1 : close].split(","):
                bounds = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", piece)
                if bounds is None:
                    raise malformed(f"range {piece!r} at position {i}: expected N or N-M")
                low, high = bounds.group(1), bounds.group(2) or bounds.group(1)
                if int(high) < int(low):
                    raise malformed(f"range {piece!r} at position {i} runs backwards")
                ranges.append((int(low), int(high), len(low)))
            parts.append(ranges)
            i = close + 1
        elif char == "]":
            raise malformed(f"']' at position {i} without '['")
        else:
            word = _NODE_TEXT.match(text, i)
            if word is None:
                raise malformed(f"unexpected {char!r} at position {i}")
            parts.append(word.group())
            i = word.end()
    if not parts:
        raise malformed("trailing ','")
    hosts.append(parts)
    return hosts


def _numbers(ranges: list[tuple[int, int, int]]) -> list[str]:
    return [str(n).zfill(width) for low, high, width in ranges for n in range(low, high + 1)]


def expand_nodelist(nodelist: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Every host of a SLURM node list: ``"gpu[07-09,12],cpu3"`` → gpu07, gpu08, gpu09,
    gpu12, cpu3; ``"r[1-2]n[01-02]"`` → r1n01, r1n02, r2n01, r2n02.

    Raises ``ValueError`` naming ``name``, the list and what is wrong with it.
    """
    return [
        "".join(choice)
        for parts in _parse_nodelist(nodelist, name)
        for choice in itertools.product(
            *([p] if isinstance(p, str) else _numbers(p) for p in parts)
        )
    ]


def first_host(nodelist: str, name: str = "SLURM_JOB_NODELIST") -> str:
    """The first host of a SLURM node list: ``"gpu[07-09,12],cpu3"`` → ``"gpu07"``.

    The whole list is checked (``ValueError`` naming ``name`` when it is malformed).
    """
    parts = _parse_nodelist(nodelist, name)[0]
    return "".join(p if isinstance(p, str) else str(p[0][0]).zfill(p[0][2]) for p in parts)


def _tasks_per_node(value: str, name: str) -> int | None:
    """The task count of every node in ``4``, ``4(x2)`` or ``2(x3),1`` (None: they differ)."""
    counts = value.split(",")
    if not all(re.fullmatch(r"[1-9][0-9]*(\(x[1-9][0-9]*\))?", c) for c in counts):
        raise ValueError(f"{name}={value!r}: expected task counts per node such as '4(x2),3'")
    distinct = {int(c.split("(")[0]) for c in counts}
    return distinct.pop() if len(distinct) == 1 else None


def check_one_launch(environ: Mapping[str, str]) -> None:
    """Refuse in one line a torchrun-style launch (``--launcher torchrun``, the default) that
    is one of several tasks of an ``srun`` step without torchrun's variables: each task would
    train the whole run on its own, into the same run folder."""
    tasks = environ.get("SLURM_STEP_NUM_TASKS", "")
    if "RANK" in environ or not tasks.isdigit() or int(tasks) <= 1:
        return
    raise ValueError(
        f"SLURM_STEP_NUM_TASKS={tasks}: this is task {environ.get('SLURM_PROCID', '?')} of an "
        "srun step, and without --launcher slurm every task would train the whole run into "
        "the same folder; pass --launcher slurm (one process per task) or start one task"
    )


def slurm_environment(environ: Mapping[str, str], port: int = DEFAULT_PORT) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) from SLURM's, for processes that ``srun`` started, one task per GPU, as
    mmsegmentation's ``--launcher slurm``: rank ``SLURM_PROCID``, world ``SLURM_NTASKS``,
    local rank ``SLURM_LOCALID``, master the first host of the step's or job's node list
    (unless MASTER_ADDR is set), port MASTER_PORT or ``port``.

    Raises ``ValueError`` naming the variable outside a SLURM step, or a malformed one: the
    numbers (SLURM_PROCID < SLURM_NTASKS, SLURM_LOCALID below the tasks per node), the node
    list, and the resulting torchrun variables (``read_environment``).
    """
    needed = {"SLURM_PROCID": 0, "SLURM_NTASKS": 1, "SLURM_LOCALID": 0}
    for name in needed:
        if environ.get(name) is None:
            raise ValueError(
                f"--launcher slurm: {name} is None, expected a number; start each process "
                "with srun (one task per GPU)"
            )
    try:
        rank, world, local = (_count(environ, k, low) for k, low in needed.items())
        assert rank is not None and world is not None and local is not None
        if rank >= world:
            raise ValueError(f"SLURM_PROCID={rank} must be below SLURM_NTASKS={world}")
        local_world, bound = world, f"SLURM_NTASKS={world}"
        per_node = next(
            (k for k in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE") if environ.get(k)),
            None,
        )
        if per_node is not None:
            count = _tasks_per_node(environ[per_node], per_node)
            if count is not None and count < world:
                local_world, bound = count, f"{count} ({per_node}={environ[per_node]!r})"
        if local >= local_world:
            raise ValueError(f"SLURM_LOCALID={local} must be below {bound}")
        master = environ.get("MASTER_ADDR")
        if not master:
            nodes = next(
                (k for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                 if environ.get(k)),
                None,
            )  # fmt: skip
            if nodes is None:
                raise ValueError("no SLURM_JOB_NODELIST and no MASTER_ADDR")
            master = first_host(environ[nodes], nodes)
        result = {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(local_world),
            "MASTER_ADDR": master,
            "MASTER_PORT": environ.get("MASTER_PORT") or str(port),
        }
        read_environment({**result, **{k: environ[k] for k in (TIMEOUT_VARIABLE,) if k in environ}})
    except ValueError as error:
        raise ValueError(f"--launcher slurm: {error}") from None
    return result


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; a no-op on one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class _SumAcrossProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes of a group, differentiable: every process's
    output is the same sum, so the gradient of each input is the sum of all processes'
    upstream gradients (an all-reduce of them)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def world_size(group=None) -> int:
    """The processes of ``group`` (default: all) under ``torch.distributed``; 1 without it."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def sum_across_processes(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """A new tensor: ``tensor`` summed over the processes of ``group`` (default: all), with a
    gradient; a copy on one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor.clone()
    return _SumAcrossProcesses.apply(tensor, group)


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
