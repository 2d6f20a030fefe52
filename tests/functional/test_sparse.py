"""The sparse pixel-anchor loss against the reference (sampling off) and its draw."""

import pytest
import torch
import torch.nn.functional as F

from contextrast.functional import reference as R
from contextrast.functional._anchors import LayerGroup
from contextrast.functional._layouts import segments
from contextrast.functional._sparse import random_rank, sparse_info_nce, sparse_pairs

N, D, K = 4, 6, 3
COUNTS = (40, 12, 6)


def make_case(seed, counts=COUNTS, ignore=255):
    """Layer 0 factored (v = lift @ c, K < d), layers 1 and 2 formed and grouped."""
    g = torch.Generator().manual_seed(seed)
    m = sum(counts)
    anchors = F.normalize(torch.randn(len(counts), N, D, generator=g, dtype=torch.float64), dim=2)
    coords = torch.randn(K, counts[0], generator=g, dtype=torch.float64)
    lift = torch.randn(D, K, generator=g, dtype=torch.float64)
    formed = torch.randn(D, m - counts[0], generator=g, dtype=torch.float64)
    labels = torch.randint(0, N, (m,), generator=g)
    labels[torch.rand(m, generator=g) < 0.15] = ignore
    pred = torch.randint(0, N, (m,), generator=g)
    errors = (labels != pred) & (labels != ignore)
    hard = errors & (torch.rand(m, generator=g) < 0.5)
    tensors = [t.requires_grad_() for t in (anchors, coords, lift, formed)]
    return tensors, labels, pred, hard


def embeddings_of(coords, lift, formed):
    return torch.cat([lift @ coords, formed], dim=1).transpose(0, 1)  # (M, d)


def sparse_loss(tensors, labels, pred, hard, mode, counts=COUNTS, **bounds):
    anchors, coords, lift, formed = tensors
    v = embeddings_of(coords, lift, formed)
    inverse = v.norm(dim=1).reciprocal()
    groups = [LayerGroup(counts[:1], coords, lift), LayerGroup(counts[1:], formed, None)]
    blocks = segments(counts, labels.device)
    options = dict(max_positives=None, max_negatives=None, pool=None) | bounds
    pairs = sparse_pairs(labels, pred, hard, blocks, N, 255, mode, **options)
    return sparse_info_nce(anchors, groups, inverse, labels, pred, blocks, pairs, 0.1)


def reference_losses(tensors, labels, pred, hard, mode, counts=COUNTS):
    anchors, coords, lift, formed = tensors
    v = F.normalize(embeddings_of(coords, lift, formed), dim=1)
    out, start = [], 0
    for i, count in enumerate(counts):
        part = slice(start, start + count)
        y, p, h = labels[part], pred[part], hard[part]
        negative = extra = None
        if mode == "only":
            negative = R.hard_negative_mask(h, p, N, fallback=True)
        elif mode == "add":
            extra = R.hard_negative_mask(h, p, N, fallback=False)
        out.append(
            R.pixel_anchor_loss(anchors[i], v[part], y, 0.1, negative, 255, extra_negative=extra)
        )
        start += count
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["add", "only", "include"])
@pytest.mark.parametrize("seed", range(3))
def test_sampling_off_equals_the_reference_with_gradients(mode, seed):
    tensors, labels, pred, hard = make_case(seed)
    got = sparse_loss(tensors, labels, pred, hard, mode)
    want = reference_losses(tensors, labels, pred, hard, mode)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    probe = torch.tensor([0.3, 1.0, 0.7], dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad((got * probe).sum(), tensors),
        torch.autograd.grad((want * probe).sum(), tensors),
    ):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_no_picks_and_an_empty_layer_are_exact_zeros_that_keep_the_graph():
    tensors, labels, pred, hard = make_case(7)
    plain = sparse_loss(tensors, labels, pred, None, "add")
    want = reference_losses(tensors, labels, pred, torch.zeros_like(hard), "include")
    assert torch.allclose(plain, want, rtol=1e-12)
    blank = torch.full_like(labels, 255)
    zero = sparse_loss(tensors, blank, pred, hard, "add")
    assert torch.equal(zero, torch.zeros(3, dtype=torch.float64)) and zero.requires_grad


def test_random_rank_is_a_uniform_order_within_each_key():
    keys = torch.tensor([0, 1, 0, 0, 1, 2])
    valid = torch.tensor([True, True, True, False, True, True])
    torch.manual_seed(0)
    firsts = torch.zeros(6, dtype=torch.float64)
    for _ in range(2000):
        rank = random_rank(keys, valid)
        assert sorted(rank[torch.tensor([0, 2])].tolist()) == [0, 1]
        assert rank[3] == 2 and rank[5] == 0  # the invalid one last; a key alone
        firsts += (rank == 0).double()
    # key 0: entries 0 and 2 each first half the time; key 1: entries 1 and 4
    assert firsts[[0, 2, 1, 4]].div(2000).sub(0.5).abs().max() < 0.05


def test_the_bounded_draw_is_uniform_per_anchor_and_layer():
    # one layer of 12 labelled pixels: class 0 holds 6, classes 1-3 two each
    labels = torch.tensor([0] * 6 + [1, 1, 2, 2, 3, 3])
    pred = torch.tensor([1] * 6 + [0, 0, 0, 0, 0, 0])
    hard = torch.tensor([True] * 4 + [False] * 2 + [True] * 6)
    blocks = segments((12,), labels.device)
    torch.manual_seed(1)
    hits_negative = torch.zeros(N, 12, dtype=torch.float64)
    hits_positive = torch.zeros(12, dtype=torch.float64)
    hits_extra = torch.zeros(12, dtype=torch.float64)
    draws = 3000
    for _ in range(draws):
        pairs = sparse_pairs(labels, pred, hard, blocks, N, 255, "add", 3, 4, None)
        # back from pool order to pixel order
        negative = torch.zeros(N, 12, dtype=torch.float64)
        negative[:, pairs.picks] = pairs.negative.double()
        assert negative.sum(1).tolist() == [4, 4, 4, 4]  # min(4, other-class pixels)
        assert pairs.positive[:6].sum() == 3 and pairs.positive[6:].all()  # min(3, count)
        assert pairs.extra[:4].sum() == 4 and pairs.extra[6:].sum() == 4  # per predicted class
        hits_negative += negative
        hits_positive += pairs.positive.double()
        hits_extra += pairs.extra.double()
    # uniform: anchor 0's 6 others each 4/6 of the time, anchor 1's 10 others each 4/10
    assert (hits_negative[0, 6:] / draws - 4 / 6).abs().max() < 0.04
    assert (hits_negative[1, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]] / draws - 0.4).abs().max() < 0.04
    assert hits_negative[0, :6].sum() == 0 and hits_negative[1, 6:8].sum() == 0
    assert (hits_positive[:6] / draws - 0.5).abs().max() < 0.04
    assert (hits_extra[6:] / draws - 4 / 6).abs().max() < 0.04  # 6 picks predicted 0, 4 kept
    # a pool of 5: every anchor's negatives come from the same 5 pixels
    pairs = sparse_pairs(labels, pred, hard, blocks, N, 255, "add", None, None, 5)
    assert pairs.picks.numel() == 5 and pairs.negative.shape == (N, 5)


def test_a_bounded_pool_keeps_each_anchors_negatives_uniform():
    """The loss's pool (4 × max_negatives pixels per layer) is a uniform random subset in a
    random order: anchor n's first max_negatives non-n pool pixels stay a uniform draw of
    its negatives (here 2 of 6 for anchor 0, 2 of 10 for anchor 1, from a pool of 8)."""
    labels = torch.tensor([0] * 6 + [1, 1, 2, 2, 3, 3])
    blocks = segments((12,), labels.device)
    torch.manual_seed(2)
    hits = torch.zeros(N, 12, dtype=torch.float64)
    draws = 3000
    for _ in range(draws):
        pairs = sparse_pairs(labels, labels, None, blocks, N, 255, "add", None, 2, 8)
        assert pairs.picks.numel() == 8
        negative = torch.zeros(N, 12, dtype=torch.float64)
        negative[:, pairs.picks] = pairs.negative.double()
        assert negative.sum(1).tolist() == [2, 2, 2, 2]  # a pool of 8 always holds 2 others
        hits += negative
    assert (hits[0, 6:] / draws - 2 / 6).abs().max() < 0.04 and hits[0, :6].sum() == 0
    assert (hits[1, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]] / draws - 0.2).abs().max() < 0.04


def test_the_anchors_windows_spread_over_the_pool():
    """Anchors 0-2 have no pixels of their own here, so their other-class pixels are the same
    8 in the same pool order; their windows of 2 start 2 ranks apart: disjoint, 6 pixels in
    all (windows at one start would give all three the same 2). Anchor 3 has none."""
    labels = torch.full((8,), 3)
    blocks = segments((8,), labels.device)
    torch.manual_seed(3)
    for _ in range(20):
        pairs = sparse_pairs(labels, labels, None, blocks, N, 255, "add", None, 2, None)
        negative = pairs.negative.int()
        assert negative.sum(1).tolist() == [2, 2, 2, 0]
        assert negative[:3].sum(0).max() == 1  # no pixel in two windows
        rank = torch.empty(8, dtype=torch.long)
        rank[pairs.picks] = torch.arange(8)  # each pixel's place in the pool order
        for anchor in range(3):  # anchor n's window: pool ranks 2n and 2n + 1
            chosen = pairs.picks[pairs.negative[anchor]]
            assert sorted(rank[chosen].tolist()) == [2 * anchor, 2 * anchor + 1]
    # A start past the row's end wraps around: anchor 3's 5 others (class 0) and its start
    # 1 + 3 · 2 = 7 give ranks 7 − 5 = 2 and 3 among them (1-based); anchor 0 has 3 others.
    labels = torch.tensor([3, 3, 3, 0, 0, 0, 0, 0])
    pairs = sparse_pairs(labels, labels, None, blocks, N, 255, "add", None, 2, None)
    negative = torch.zeros(N, 8, dtype=torch.long)
    negative[:, pairs.picks] = pairs.negative.long()
    assert negative.sum(1).tolist() == [2, 2, 2, 2]
    assert negative[0, 3:].sum() == 0 and negative[3, :3].sum() == 0
    others = pairs.picks[labels[pairs.picks] == 0]  # anchor 3's others in pool order
    assert set(others[1:3].tolist()) == set(torch.nonzero(negative[3]).view(-1).tolist())
