"""Contextrast++'s anchor-to-anchor term: the fast forms against the readable references."""

import math

import pytest
import torch
import torch.nn.functional as F

from contextrast.functional import anchor_memory as fast
from contextrast.functional import reference as R


def test_class_prioritized_anchors_by_hand():
    # 3 layers, 4 classes, d = 2; anchors[i, n] = (i, n) so the pick is readable.
    anchors = torch.tensor([[[i, n] for n in range(4)] for i in range(3)], dtype=torch.float64)
    counts = torch.tensor(
        [
            [5, 3, 1],  # class 0: in every layer -> layer 2's
            [2, 0, 0],  # class 1: only the finest -> layer 0's
            [0, 4, 4],  # class 2: not in N_1 -> absent
            [7, 1, 0],  # class 3: deepest held is layer 1
        ]
    )
    want = torch.tensor([[2, 0], [0, 1], [0, 0], [1, 3]], dtype=torch.float64)
    for function in (R.class_prioritized_anchors, fast.class_prioritized_anchors):
        chosen, present = function(anchors, counts)
        assert torch.equal(chosen, want)
        assert present.tolist() == [True, True, False, True]


def test_anchor_anchor_loss_by_hand():
    # One query (class 0) at angle 0; memory: one class-0 entry at angle 0, one class-1
    # entry at 90°. τ = 0.5: s+ = 2, s− = 0; L = −log(e² / (e² + 1)).
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    want = -math.log(math.exp(2.0) / (math.exp(2.0) + 1))
    got = fast.anchor_anchor_loss(query, torch.tensor([0]), memory, labels, 0.5)
    assert got.item() == pytest.approx(want, rel=1e-12)
    ref = R.anchor_anchor_loss(query, torch.tensor([0]), memory, labels, 0.5)
    assert ref.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_fast_anchor_anchor_loss_equals_the_reference_with_its_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    n, size, d = 5, 3, 8
    queries = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    queries.requires_grad_()
    memory = F.normalize(torch.randn(n * size, d, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(n).repeat_interleave(size)
    labels[torch.rand(n * size, generator=g) < 0.4] = -1  # partly filled queues
    labels[size : 2 * size] = -1  # class 1: an empty queue, no term
    present = torch.rand(n, generator=g) < 0.8
    present[0] = True
    classes = torch.arange(n)
    got = fast.anchor_anchor_loss(queries, classes, memory, labels, 0.1, mask=present)
    keep = present.nonzero().flatten()
    filled = labels >= 0
    want = R.anchor_anchor_loss(queries[keep], classes[keep], memory[filled], labels[filled], 0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    (g_fast,) = torch.autograd.grad(got, queries)
    (g_ref,) = torch.autograd.grad(want, queries)
    assert torch.allclose(g_fast, g_ref, atol=1e-12)


def test_empty_memory_gives_zero_with_a_finite_gradient():
    queries = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    memory, labels = torch.zeros(6, 4, dtype=torch.float64), torch.full((6,), -1)
    loss = fast.anchor_anchor_loss(queries, torch.arange(3), memory, labels, 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(queries.grad).all()
    # only positives (one class in the memory): no negative, each term log(1) = 0
    labels = torch.zeros(6, dtype=torch.long)
    memory = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    loss = fast.anchor_anchor_loss(queries, torch.arange(3), memory, labels, 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_the_fast_form_checks_its_temperature_and_mask():
    queries = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=1)
    memory, labels = queries.clone(), torch.tensor([0, 1])
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            fast.anchor_anchor_loss(queries, torch.arange(2), memory, labels, bad)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor, got torch\.int64"):
        fast.anchor_anchor_loss(queries, torch.arange(2), memory, labels, 0.1, torch.tensor([1, 0]))
