"""Global anchors (issue 22): N gloo processes holding B/N images each compute the loss of one
process holding all B images — the value on every process, and the projection heads'
gradients once averaged over the processes as DDP averages them (K = 0, no sampling)."""

import contextlib
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from contextrast import ContextrastLoss

N = 5
CHANNELS = (3, 4, 5, 6)
SIZES = ((16, 24), (8, 12), (4, 6), (2, 3))


def make_case(batch: int = 6):
    """Features, logits and a blocky target of ``batch`` images. Class 4 lies in image 0
    only (one process's); image ``batch - 1`` is all ignore."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 4, (batch, 1, 4, 6), generator=g).double()
    target = F.interpolate(coarse, size=(64, 96), mode="nearest")[:, 0].long()
    target[0, 8:24, 16:40] = 4
    target[:, :4] = 255
    target[-1] = 255
    features = [
        torch.randn(batch, c, h, w, generator=g, dtype=torch.float64)
        for c, (h, w) in zip(CHANNELS, SIZES)
    ]
    logits = torch.randn(batch, N, 16, 24, generator=g, dtype=torch.float64)
    return features, logits, target


def make_loss(memory: int | None = None, form: str = "auto") -> ContextrastLoss:
    torch.manual_seed(0)  # the same heads on every process
    loss = ContextrastLoss(
        N, CHANNELS, embed_dim=8, bane_ratio=0.0, max_positives=None, max_negatives=None,
        anchor_memory=memory, pair_form=form,
    ).double()  # fmt: skip
    # Running statistics: BatchNorm in train mode would normalise each process's share by
    # its own statistics (SyncBatchNorm's job under DDP, not the loss's). The loss itself
    # trains: its anchor memory is written in training mode only.
    loss.heads.eval()
    return loss if memory else loss.eval()


@contextlib.contextmanager
def _process(rank: int, world: int, port: int):
    """One gloo process of ``world``: the whole case and this rank's share of its images."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield make_case(), slice(rank * 6 // world, (rank + 1) * 6 // world)
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, out: str, form: str = "auto") -> None:
    with _process(rank, world, port) as ((features, logits, target), share):
        loss = make_loss(form=form)
        terms = loss.terms([f[share] for f in features], logits[share], target[share])
        terms.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in loss.parameters()])
        dist.all_reduce(grads)  # DDP: the average over the processes
        torch.save(
            {"loss": terms.loss.detach(), "layers": terms.layer_losses, "grads": grads / world},
            f"{out}.{rank}",
        )


def _memory_worker(rank: int, world: int, port: int, out: str) -> None:
    with _process(rank, world, port) as ((features, logits, target), share):
        loss = make_loss(memory=2)
        losses = [
            loss.terms([f[share] for f in features], logits[share], target[share]).loss.detach()
            for _ in range(3)
        ]
        torch.save({"losses": losses, "memory": loss.memory.state_dict()}, f"{out}.{rank}")


def test_the_anchor_memory_fills_alike_on_every_process(tmp_path):
    # Issue 30: the memory is filled from every process: with global anchors each pushes
    # the anchors of the whole batch, so every queue equals one process's on all images.
    # Class 4 lies in rank 0's image only: rank 1 still pushes it.
    features, logits, target = make_case()
    loss = make_loss(memory=2)
    whole = [loss.terms(features, logits, target).loss.detach() for _ in range(3)]
    assert loss.memory.count.tolist() == [2, 2, 2, 2, 2]
    out = tmp_path / "m"
    mp.spawn(_memory_worker, args=(2, _free_port(), str(out)), nprocs=2)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        for key, value in loss.memory.state_dict().items():
            assert torch.allclose(got["memory"][key].double(), value.double(), atol=1e-12), key
        for a, b in zip(got["losses"], whole):
            assert a.item() == pytest.approx(b.item(), rel=1e-10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Three processes (two images each) take another ~10 s: opt-in (-m slow). Both pair forms
# (the sparse one reduces its own statistics: the shift, the sums and counts, q).
@pytest.mark.parametrize(
    "world, form",
    [(2, "dense"), (2, "sparse"), pytest.param(3, "dense", marks=pytest.mark.slow)],
)
def test_processes_with_global_anchors_equal_one_process_with_the_whole_batch(
    world, form, tmp_path
):
    features, logits, target = make_case()
    loss = make_loss(form=form)
    whole = loss.terms(features, logits, target)
    whole.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in loss.parameters()])
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path / "r"), form), nprocs=world)
    for rank in range(world):
        got = torch.load(tmp_path / f"r.{rank}")
        assert got["loss"].item() == pytest.approx(whole.loss.item(), rel=1e-10)
        assert torch.allclose(got["layers"], whole.layer_losses, rtol=1e-10, atol=0)
        assert (got["grads"] - grads).norm() <= 1e-10 * grads.norm()


def test_one_process_ignores_global_anchors():
    features, logits, target = make_case()
    loss = make_loss()
    local = make_loss()
    local.global_anchors = False
    assert loss(features, logits, target).item() == local(features, logits, target).item()
