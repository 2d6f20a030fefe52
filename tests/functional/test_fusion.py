"""Contextrast++'s adaptive fusion: the fast form against the readable reference, a case by
hand, and the whole loss with it against the reference loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from contextrast import functional as CF
from contextrast.contrast.fusion import AnchorFusion
from contextrast.contrast.sampling import BaneSampler
from contextrast.functional import reference as R
from contextrast.functional.fusion import FusionWeights, adaptive_fuse, refine
from tests.functional.test_fast_vs_reference import HYPER, N, make_case


def random_weights(layers: int, d: int, hidden: int, seed: int) -> FusionWeights:
    g = torch.Generator().manual_seed(seed)
    shapes = ((d, d), (d, d), (d, d), (hidden, 2 * d), (hidden,), (d, hidden), (d,))
    return FusionWeights(
        *(
            torch.randn(layers, *s, generator=g, dtype=torch.float64).requires_grad_()
            for s in shapes
        )
    )


def test_refine_by_hand():
    # d = 2, a = (1, 0); W_q = W_k = identity: q = k = (1, 0); W_v swaps: v = (0, 1).
    # Channel 0 scores (1, 0)/√2 over k -> softmax (e^{1/√2}, 1)/Σ; channel 1 scores (0, 0)
    # -> (1/2, 1/2). F(a)_j = Σ_k p_jk v_k = p_j1 (v = (0, 1)).
    eye = torch.eye(2, dtype=torch.float64)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    e = math.exp(1 / math.sqrt(2))
    want = torch.tensor([1 / (e + 1), 0.5], dtype=torch.float64)
    assert torch.allclose(R.refine_anchor(a, eye, eye, swap), want, rtol=1e-12)
    unused = torch.zeros(0)  # refine reads F's maps only
    weights = FusionWeights(eye[None], eye[None], swap[None], *[unused] * 4)
    got = refine(a.view(1, 1, 2), weights)
    assert torch.allclose(got.view(2), want, rtol=1e-12)


def assert_same_gradients(got, want, inputs, generator):
    """got and want have the same gradients to ``inputs`` under one random probe; returns
    got's."""
    probe = torch.randn(got.shape, generator=generator, dtype=torch.float64)
    got_grads = torch.autograd.grad((got * probe).sum(), inputs, retain_graph=True)
    want_grads = torch.autograd.grad((want * probe).sum(), inputs, retain_graph=True)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    return got_grads


@pytest.mark.parametrize("seed", range(3))
def test_fast_fusion_equals_the_reference_with_its_gradient(seed):
    layers, n, d, hidden = 4, 6, 8, 5
    g = torch.Generator().manual_seed(seed + 10)
    anchors = torch.randn(layers, n, d, generator=g, dtype=torch.float64).requires_grad_()
    counts = torch.randint(0, 3, (n, layers), generator=g)
    counts[0] = 1  # a class in every layer: fused everywhere
    counts[1, -1] = 0  # absent from the last layer: kept
    counts[2, 0] = 0  # absent from layer 0 only: kept there, fused elsewhere
    weights = random_weights(layers - 1, d, hidden, seed)
    got = adaptive_fuse(anchors, counts, weights, normalize=True)
    want = torch.stack(
        R.adaptive_updated_anchors(list(anchors), weights, list((counts > 0).T), normalize=True)
    )
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-13)
    # the kept rows are the anchors themselves (normalised), the last layer too
    assert torch.allclose(got[:, 1], F.normalize(anchors[:, 1], dim=1))
    assert torch.allclose(got[0, 2], F.normalize(anchors[0, 2], dim=0))
    assert torch.allclose(got[-1], F.normalize(anchors[-1], dim=1))
    got_grads = assert_same_gradients(got, want, [anchors, *weights], g)
    # every module's parameters receive a gradient (each fuses class 0)
    assert all(grad[layer].abs().sum() > 0 for grad in got_grads[1:] for layer in range(3))


@pytest.mark.parametrize("seed", range(2))
def test_residual_fusion_is_the_fixed_fusion_plus_the_module_with_its_gradient(seed):
    layers, n, d, hidden = 3, 4, 6, 5
    g = torch.Generator().manual_seed(seed + 20)
    anchors = torch.randn(layers, n, d, generator=g, dtype=torch.float64).requires_grad_()
    counts = torch.ones(n, layers, dtype=torch.long)
    counts[1, -1] = 0  # absent from the last layer: kept as it is, not fused
    weights = random_weights(layers - 1, d, hidden, seed)
    got = adaptive_fuse(anchors, counts, weights, normalize=False, residual=0.7)
    want = torch.stack(
        R.adaptive_updated_anchors(list(anchors), weights, list((counts > 0).T), residual=0.7)
    )
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-13)
    replaced = adaptive_fuse(anchors, counts, weights, normalize=False)
    fixed = 0.3 * anchors[:-1] + 0.7 * anchors[-1:]  # (I − 1, N, d)
    assert torch.allclose(got[:-1, 0], replaced[:-1, 0] + fixed[:, 0], rtol=1e-12)
    assert torch.equal(got[:, 1], anchors[:, 1]) and torch.equal(got[-1], anchors[-1])
    assert_same_gradients(got, want, [anchors, *weights], g)
    # zero-initialised output layer: the module adds nothing, the fixed fusion is exact
    start = AnchorFusion(layers - 1, d, hidden, zero_out=True).double().weights()
    assert torch.equal(start.out, torch.zeros_like(start.out)) and start.query.abs().sum() > 0
    fused = adaptive_fuse(anchors, counts, start, normalize=True, residual=0.7)
    present = counts[:, -1] > 0
    assert torch.allclose(fused, CF.batched.fuse_anchors(anchors, present, 0.7), rtol=1e-12)


def test_the_loss_with_adaptive_fusion_equals_the_reference_loss():
    embeddings, logits, target = make_case(seed=5)
    weights = random_weights(3, embeddings[0].shape[1], 7, seed=5)
    targets = CF.layer_targets(logits, target, [e.shape[-2:] for e in embeddings])
    hard = BaneSampler(0.5, validate=False)(
        targets.labels, targets.pred, num_classes=N, layout=targets.layout
    )
    got = CF.contextrast_loss(
        embeddings, logits, target, **HYPER, ignore_index=255, hard=hard, targets=targets,
        hard_negatives="add", max_pixels=None,
        max_positives=None, max_negatives=None, normalize_anchors=True,
        detach_anchors=False, global_anchors=False, fusion=weights,
    )  # fmt: skip
    loss, layers, hard = R.contextrast_loss(
        embeddings, logits, target, **HYPER, bane_ratio=0.5, ignore_index=255,
        hard_negatives="add", normalize_anchors=True, fusion=weights,
    )  # fmt: skip
    fixed = R.contextrast_loss(
        embeddings, logits, target, **HYPER, bane_ratio=0.5, ignore_index=255,
        hard_negatives="add", normalize_anchors=True,
    )[0]  # fmt: skip
    assert N == logits.shape[1] and torch.equal(got.hard_negatives, hard)
    assert got.loss.item() == pytest.approx(loss.item(), rel=1e-10)
    assert abs(loss.item() - fixed.item()) > 1e-3  # the fusion changed the anchors
    assert torch.allclose(got.layer_losses[-1], layers[-1], rtol=1e-10)
    inputs = [*embeddings, *weights]
    for a, b in zip(torch.autograd.grad(got.loss, inputs), torch.autograd.grad(loss, inputs)):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-13)


def test_anchor_fusion_module_shapes_and_initialisation():
    fusion = AnchorFusion(3, 16, hidden=8)
    w = fusion.weights()
    assert tuple(w.query.shape) == (3, 16, 16) and tuple(w.hidden.shape) == (3, 8, 32)
    assert tuple(w.out.shape) == (3, 16, 8) and tuple(w.out_bias.shape) == (3, 16)
    # nn.Linear's bound 1/√fan_in
    assert w.hidden.abs().max() <= 1 / math.sqrt(32) and w.out.abs().max() <= 1 / math.sqrt(8)
    assert w.query.abs().max() > 0.5 / math.sqrt(16)
