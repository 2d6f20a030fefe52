import pytest
import torch
import torch.nn.functional as F

from contextrast import functional as CF
from contextrast.contrast import BaneSampler, ProjectionHead


def test_bane_sampler_picks_error_pixels_nearest_the_edge():
    # GT: class 1 square 5×5; prediction misses it entirely (all class 0).
    target = torch.zeros(1, 7, 7, dtype=torch.long)
    target[0, 1:6, 1:6] = 1
    pred = torch.zeros_like(target)
    hard = BaneSampler(ratio=16 / 25)(target, pred, num_classes=2)
    # The 16 rim pixels of the 5×5 error square are at distance 1, the inner 9 further.
    ring = torch.zeros_like(hard)
    ring[0, 1:6, 1:6] = True
    ring[0, 2:5, 2:5] = False
    assert torch.equal(hard, ring)
    assert not BaneSampler(ratio=0)(target, pred, num_classes=2).any()
    assert BaneSampler(ratio=1)(target, pred, num_classes=2).sum() == 25


def test_bane_sampler_runs_without_grad_and_validates():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    hard = BaneSampler(0.5)(torch.ones(1, 4, 4, dtype=torch.long), logits.argmax(1), num_classes=2)
    assert not hard.requires_grad
    with pytest.raises(ValueError, match="bane ratio"):
        BaneSampler(ratio=2)


def test_bound_pixels_keeps_priority_and_skips_ignore():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 255, 1, 0, 255, 1, 0])
    priority = torch.tensor([False, False, False, True, False, False, True, False])
    keep, kept = CF.batched.bound_pixels(labels, 4, priority)
    assert keep.numel() == 4 and kept.counts == (4,)
    assert {3, 6} == set(keep[:2].tolist()) and not set(keep.tolist()) & {2, 5}
    # 6 labelled pixels of 8 fit a bound of 6: all of them are kept, with no host sync to
    # count them (so the pick is 6 indices, not "all").
    fit, _ = CF.batched.bound_pixels(labels, 6, priority)
    assert set(fit.tolist()) == {0, 1, 3, 4, 6, 7}
    assert CF.batched.bound_pixels(labels, 8, priority) is None
    # Per block: the first (5 pixels, 4 labelled) is cut to its 4 labelled ones, the second
    # (3 pixels) fits and is kept whole; the kept segments say so.
    blocks = CF.batched.segments((5, 3), labels.device)
    keep, kept = CF.batched.bound_pixels(labels, 4, priority, blocks)
    assert set(keep[:4].tolist()) == {0, 1, 3, 4} and set(keep[4:].tolist()) == {5, 6, 7}
    assert kept.counts == (4, 3)


def test_bound_pixels_draws_the_other_labelled_pixels_uniformly():
    """After the priority pixels, every other labelled pixel of a layer is kept with the same
    probability: 2 of the 4 non-priority labelled pixels, 1/2 each (4,000 draws)."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 255, 1, 0, 255, 1, 0, 2, 2, 3])
    priority = torch.zeros(11, dtype=torch.bool)
    priority[[3, 6]] = True
    blocks = CF.batched.segments((8, 3), labels.device)
    hits = torch.zeros(11)
    for _ in range(4000):
        keep, kept = CF.batched.bound_pixels(labels, 4, priority, blocks)
        assert kept.counts == (4, 3) and set(keep[4:].tolist()) == {8, 9, 10}
        hits[keep[:4]] += 1
    assert hits[[3, 6]].tolist() == [4000, 4000] and hits[[2, 5]].sum() == 0
    # the binomial s.d. of a 1/2 share of 4,000 draws is 31.6
    assert ((hits[[0, 1, 4, 7]] - 4000 / 2).abs() < 5 * 31.6).all()


def test_projection_head_normalises():
    head = ProjectionHead(5, embed_dim=3)
    out = head(torch.randn(2, 5, 4, 4))
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 4, 4), atol=1e-6)
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        ProjectionHead(5, embed_dim=0)


@pytest.mark.parametrize("order", ["bn_relu", "relu_bn"])
def test_projection_head_factored_form_is_its_output(order):
    head = ProjectionHead(3, embed_dim=8, order=order).double().train()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    coords, lift = head.factored(x)
    assert coords.shape == (2, 4, 4, 5) and lift.shape == (8, 4)  # K = hidden 3 + 1
    assert torch.equal(coords[:, 3], torch.ones(2, 4, 5, dtype=torch.float64))
    raw = torch.einsum("dk,bkhw->bdhw", lift, coords)
    assert torch.allclose(F.normalize(raw, dim=1), head(x), atol=1e-12)
    # As wide a hidden layer as the output: nothing to gain, the raw embeddings come back.
    wide = ProjectionHead(8, embed_dim=8).double()
    y = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    coords, lift = wide.factored(y)
    assert lift is None and torch.allclose(F.normalize(coords, dim=1), wide(y), atol=1e-12)


def test_sample_per_row_keeps_at_most_count_of_each_row_uniformly():
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, :30] = True  # more than the bound: 10 of these 30
    mask[1, 5:9] = True  # fewer: kept whole
    torch.manual_seed(0)
    hits = torch.zeros(40)
    for _ in range(300):
        picked = CF.batched.sample_per_row(mask, 10)
        assert picked.sum(1).tolist() == [10, 4, 0]
        assert not (picked & ~mask).any()
        hits += picked[0].float()
    # each of the 30 candidates is kept 1/3 of the time: 100 of 300 draws (binomial sd 8.2)
    assert hits[:30].min() > 60 and hits[:30].max() < 140
    with pytest.raises(ValueError, match="count must be >= 1"):
        CF.batched.sample_per_row(mask, 0)


def test_sample_pairs_bounds_each_kind_separately():
    positive = torch.zeros(2, 50, dtype=torch.bool)
    positive[0, :20] = True
    negative = ~positive
    extra = negative & (torch.arange(50) % 2 == 0)
    p, n, e = CF.batched.sample_pairs(positive, negative, extra, None, 5, 8)
    assert p.sum(1).tolist() == [5, 0]
    assert n.sum(1).tolist() == [8, 8] and e.sum(1).tolist() == [8, 8]
    assert not (e & ~extra).any() and not (p & ~positive).any() and not (n & ~negative).any()
    p, n, e = CF.batched.sample_pairs(positive, negative, None, None, 5, None)
    assert torch.equal(n, negative) and e is None


def test_every_pixel_sampler_returns_a_mask_of_labels_shape_under_no_grad():
    from contextrast.contrast import sampling

    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])  # (1, 2, 4)
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 0, 1]]])
    flat_labels, flat_pred = labels.flatten(1), pred.flatten(1)  # (1, 8)
    calls = {
        sampling.BaneSampler: lambda s: s(labels, pred, num_classes=2),
        sampling.SemiHardSampler: lambda s: s(labels, pred, num_classes=2),
        sampling.HardAnchorSampler: lambda s: s(flat_labels, flat_pred, num_classes=2),
        sampling.BalancedRandomSampler: lambda s: s(flat_labels, num_classes=2),
    }
    made = {
        sampling.HardAnchorSampler: sampling.HardAnchorSampler(max_views=2),
        sampling.BalancedRandomSampler: sampling.BalancedRandomSampler(min_pixels=1),
    }
    subclasses = {
        c for c in vars(sampling).values()
        if isinstance(c, type) and issubclass(c, sampling.PixelSampler)
    } - {sampling.PixelSampler}  # fmt: skip
    assert subclasses == set(calls)
    for cls, call in calls.items():
        picked = call(made.get(cls) or cls())
        inputs = labels if cls in (sampling.BaneSampler, sampling.SemiHardSampler) else flat_labels
        assert picked.dtype == torch.bool and picked.shape == inputs.shape, cls
        assert picked.any() and not (picked & (inputs == 255)).any(), cls
    for cls in (sampling.BaneSampler, sampling.HardAnchorSampler):
        with pytest.raises(ValueError, match="picks by the prediction: pass pred"):
            (made.get(cls) or cls())(flat_labels if cls is sampling.HardAnchorSampler else labels)
    with torch.enable_grad():
        x = torch.zeros(1, requires_grad=True)

        class Probe(sampling.PixelSampler):
            def select(self, labels, pred, num_classes=None, layout=None):
                self.grad = (x * 2).requires_grad
                return labels == 0

        probe = Probe()
        assert probe(labels, pred).sum() == 4 and probe.grad is False  # no autograd inside

        class Wrong(sampling.PixelSampler):
            def select(self, labels, pred, num_classes=None, layout=None):
                return labels.flatten().nonzero()  # indices: not the contract

        with pytest.raises(TypeError, match="must return a bool tensor of labels' shape"):
            Wrong()(labels, pred)


def test_rows_are_sampled_independently():
    # Two anchors with the same 100 candidates, 10 each: independent draws share about
    # 10 · 10 / 100 = 1 pixel; one shared random order (a cheaper scheme that lost accuracy
    # on the real-image benchmark) would give both the same 10.
    torch.manual_seed(0)
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[:, :100] = True
    blocks = CF.batched.segments((200, 100), mask.device)
    overlaps = []
    for _ in range(50):
        picked = CF.batched.sample_per_row(mask, 10, blocks)
        assert picked.sum(1).tolist() == [10, 10] and not (picked & ~mask).any()
        overlaps.append(int((picked[0] & picked[1]).sum()))
    assert sum(overlaps) / len(overlaps) < 2.5
