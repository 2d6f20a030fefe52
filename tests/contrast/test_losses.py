import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contextrast import ContextrastLoss
from contextrast import functional as CF
from contextrast.contrast import ProjectionHead
from contextrast.functional import resize_labels
from tests import reference as ref

N = 3


def make_inputs(channels=(4, 6), sizes=((8, 10), (4, 5)), batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(batch, c, *s, generator=g, dtype=dtype).requires_grad_()
        for c, s in zip(channels, sizes)
    ]
    target = torch.randint(0, N, (batch, 16, 20), generator=g)
    target[0, :2, :] = 255
    logits = torch.randn(batch, N, 8, 10, generator=g, dtype=dtype)
    return features, logits, target


def reference_loss(module, features, logits, target, hard=None, sampled=None):
    """Whole CCL + BANE loss from the paper's equations with NumPy loops.

    hard: per layer, the (M,) selected pixels; sampled: per layer, the (positive, negative,
    extra) (N, M) masks a per-anchor sampler kept (None: all)."""
    with torch.no_grad():
        embeddings = [head(f).numpy() for head, f in zip(module.heads, features)]
    pred = logits.argmax(1).numpy()
    tgt = target.numpy()
    per_layer, anchors, present = [], [], []
    for e in embeddings:
        a, p = ref.anchors(e, ref.nearest(tgt, *e.shape[-2:]), N)
        anchors.append(a)
        present.append(p)
    for i, e in enumerate(embeddings):
        h, w = e.shape[-2:]
        fused = anchors[i].copy()
        if i < len(embeddings) - 1:
            for c in range(N):
                if present[-1][c]:
                    fused[c] = (1 - module.w_high) * anchors[i][c] + module.w_high * anchors[-1][c]
        if module.normalize_anchors:
            fused = fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)
        labels = ref.nearest(tgt, h, w).reshape(-1)
        layer_pred = ref.nearest(pred, h, w).reshape(-1)
        mask = extra = positive = None
        selected = hard[i] if hard is not None else np.zeros_like(labels, dtype=bool)
        if module.bane_ratio > 0 and module.hard_negatives == "only":
            mask = np.ones((N, labels.size), dtype=bool)
            for c in range(N):
                row = selected & (layer_pred == c)
                if row.any():
                    mask[c] = row
        if module.bane_ratio > 0 and module.hard_negatives == "add":
            extra = np.stack([selected & (layer_pred == c) for c in range(N)])
        if sampled is not None:
            positive, negative, extra = sampled[i]
            mask = negative if mask is None else mask & negative
        flat = e.transpose(0, 2, 3, 1).reshape(-1, e.shape[1])
        per_layer.append(
            ref.pixel_anchor_loss(
                fused, flat, labels, module.temperature, mask, 255, positive, extra
            )
        )
    total = sum(lam * x for lam, x in zip(module.layer_weights, per_layer))
    return module.loss_weight * total, per_layer


def reference_bane(module, features, logits, target):
    """Hard-negative pixels per layer by brute force (scipy EDT, sorting per class)."""
    pred = logits.argmax(1).numpy()
    tgt = target.numpy()
    out = []
    for f in features:
        h, w = f.shape[-2:]
        labels, layer_pred = ref.nearest(tgt, h, w), ref.nearest(pred, h, w)
        chosen = np.zeros(labels.shape, dtype=bool)
        for c in range(N):
            errors = (layer_pred != c) & (labels == c)
            dist = ref.edt(errors)
            values = dist[errors]
            k = ref.ceil_ratio(module.bane_ratio, values.size)
            if k:
                threshold = np.sort(values)[k - 1]
                chosen |= errors & (dist <= threshold)  # ties: all of them (checked below)
        out.append(chosen.reshape(-1))
    return out


@pytest.mark.parametrize("embed_dim", [5, 16])  # 16: both heads take the factored path
def test_plain_ccl_matches_reference(embed_dim):
    features, logits, target = make_inputs()
    module = ContextrastLoss(
        N, [4, 6], embed_dim=embed_dim, layer_weights=(0.4, 1.0), bane_ratio=0.0
    )
    module.double()
    terms = module.terms(features, logits, target)
    want, want_layers = reference_loss(module, features, logits, target)
    assert terms.loss.item() == pytest.approx(want, rel=1e-9)
    np.testing.assert_allclose(terms.layer_losses.numpy(), want_layers, rtol=1e-9)
    assert terms.hard_negatives.tolist() == [0, 0]


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_bane_loss_matches_reference(ratio):
    features, logits, target = make_inputs(seed=4)
    module = ContextrastLoss(
        N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), bane_ratio=ratio, w_high=0.3
    )
    module.double()
    with torch.no_grad():
        embeddings = [head(f) for head, f in zip(module.heads, features)]
    # The selection is checked against the brute force up to ties; the loss is then
    # recomputed from the module's own selection so that tie-breaking cannot matter.
    hard = []
    brute = reference_bane(module, features, logits, target)
    pred = logits.argmax(1)
    for e, allowed in zip(embeddings, brute):
        size = e.shape[-2:]
        layer_pred = resize_labels(pred, tuple(size))
        chosen = module.sampler(resize_labels(target, tuple(size)), layer_pred, num_classes=N)
        chosen = chosen.reshape(-1)
        assert not (chosen.numpy() & ~allowed).any()
        hard.append(chosen.numpy())
    terms = module.terms(features, logits, target)
    want, _ = reference_loss(module, features, logits, target, hard)
    assert terms.loss.item() == pytest.approx(want, rel=1e-9)
    assert terms.hard_negatives.tolist() == [int(h.sum()) for h in hard]
    assert terms.hard_negatives.min() > 0


def module_hard_negatives(module, features, logits, target):
    """The module's own BANE selection per layer, (M,) bool each."""
    pred = logits.argmax(1)
    hard = []
    for f in features:
        size = tuple(f.shape[-2:])
        layer_pred = resize_labels(pred, size)
        picked = module.sampler(resize_labels(target, size), layer_pred, num_classes=N)
        hard.append(picked.reshape(-1))
    return [h.numpy() for h in hard]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("embed_dim", [5, 16])
def test_added_hard_negatives_match_reference(normalize, embed_dim):
    features, logits, target = make_inputs(seed=4)
    module = ContextrastLoss(
        N,
        [4, 6],
        embed_dim=embed_dim,
        layer_weights=(0.4, 1.0),
        hard_negatives="add",
        normalize_anchors=normalize,
    )
    module.double()
    hard = module_hard_negatives(module, features, logits, target)
    terms = module.terms(features, logits, target)
    want, want_layers = reference_loss(module, features, logits, target, hard)
    assert terms.loss.item() == pytest.approx(want, rel=1e-9)
    np.testing.assert_allclose(terms.layer_losses.numpy(), want_layers, rtol=1e-9)
    # A hard negative counts twice: the loss is above the include reading's.
    include = ContextrastLoss(
        N, [4, 6], embed_dim=embed_dim, layer_weights=(0.4, 1.0), hard_negatives="include",
        normalize_anchors=normalize,
    )  # fmt: skip
    include.load_state_dict(module.state_dict())
    include.double()
    assert terms.loss.item() > include(features, logits, target).item()


@pytest.mark.parametrize("mode", ["add", "only"])
def test_per_anchor_sampling_scores_the_sampled_pairs(monkeypatch, mode):
    features, logits, target = make_inputs(seed=6)
    module = ContextrastLoss(
        N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), hard_negatives=mode,
        normalize_anchors=True, max_positives=7, max_negatives=9,
    )  # fmt: skip
    module.double()
    hard = module_hard_negatives(module, features, logits, target)
    sampler = CF.batched.sample_pairs
    kept = []

    def recording(positive, negative, extra, blocks, max_positives, max_negatives):
        # The loss samples every layer at once; its blocks are the layers' pixels.
        assert (max_positives, max_negatives) == (7, 9)
        out = sampler(positive, negative, extra, blocks, max_positives, max_negatives)
        assert not (out[0] & ~positive).any() and not (out[1] & ~negative).any()
        for layer in zip(*(m.split(blocks.counts, dim=1) for m in out if m is not None)):
            assert layer[0].sum(1).max() <= 7 and layer[1].sum(1).max() <= 9
            if extra is None:
                layer = (*layer, None)
            kept.append(tuple(None if m is None else m.numpy() for m in layer))
        return out

    monkeypatch.setattr(CF.batched, "sample_pairs", recording)
    terms = module.terms(features, logits, target)
    assert len(kept) == 2
    assert (kept[0][0].sum(1) == 7).all()  # every class has more than 7 pixels on layer 0
    want, _ = reference_loss(module, features, logits, target, hard, kept)
    assert terms.loss.item() == pytest.approx(want, rel=1e-9)


def test_bounds_above_the_pixel_count_are_no_sampling():
    features, logits, target = make_inputs(seed=7)
    torch.manual_seed(0)
    plain = ContextrastLoss(N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), hard_negatives="add")
    bounded = ContextrastLoss(
        N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), hard_negatives="add",
        max_positives=1000, max_negatives=1000,
    )  # fmt: skip
    bounded.load_state_dict(plain.state_dict())
    plain.double(), bounded.double()
    assert bounded(features, logits, target).item() == pytest.approx(
        plain(features, logits, target).item(), rel=1e-12
    )


def test_bane_changes_the_loss_and_ratio_zero_is_plain_ccl():
    features, logits, target = make_inputs(seed=5)
    torch.manual_seed(0)
    plain = ContextrastLoss(N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), bane_ratio=0.0)
    torch.manual_seed(0)
    bane = ContextrastLoss(N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), bane_ratio=0.5)
    plain.double(), bane.double()
    assert plain(features, logits, target).item() != pytest.approx(
        bane(features, logits, target).item(), rel=1e-3
    )
    include = ContextrastLoss(
        N, [4, 6], embed_dim=5, layer_weights=(0.4, 1.0), hard_negatives="include"
    )
    include.load_state_dict(plain.state_dict())
    include.double()
    # Without a pixel bound, keeping every ordinary negative is plain CCL.
    assert include(features, logits, target).item() == pytest.approx(
        plain(features, logits, target).item(), rel=1e-12
    )


def test_w_high_zero_is_independent_layers_and_one_uses_last_anchors():
    features, logits, target = make_inputs(seed=6)
    module = ContextrastLoss(
        N, [4, 6], embed_dim=5, layer_weights=(1.0, 0.0), bane_ratio=0.0, normalize_anchors=False
    )
    module.double()
    with torch.no_grad():
        e0 = module.heads[0](features[0])
    lab0 = resize_labels(target, tuple(e0.shape[-2:]))
    a0, _ = ref.anchors(e0.numpy(), lab0.numpy(), N)
    flat = e0.permute(0, 2, 3, 1).reshape(-1, 5).numpy()
    module.w_high = 0.0
    alone = ref.pixel_anchor_loss(a0, flat, lab0.reshape(-1).numpy(), 0.1)
    assert module(features, logits, target).item() == pytest.approx(0.1 * alone, rel=1e-9)
    module.w_high = 1.0
    with torch.no_grad():
        e1 = module.heads[1](features[1])
    a1, _ = ref.anchors(e1.numpy(), resize_labels(target, (4, 5)).numpy(), N)
    top = ref.pixel_anchor_loss(a1, flat, lab0.reshape(-1).numpy(), 0.1)
    assert module(features, logits, target).item() == pytest.approx(0.1 * top, rel=1e-9)


@pytest.mark.parametrize("max_pixels", [None, 50])
def test_factored_embeddings_give_the_materialised_loss_and_gradients(monkeypatch, max_pixels):
    # embed_dim 16 > hidden + 1: every head takes the factored path; the same module with
    # the d-dim embeddings formed explicitly must give the same loss and gradients.
    features, logits, target = make_inputs(channels=(3, 4, 5, 6), sizes=((8, 10),) * 4)
    module = ContextrastLoss(N, [3, 4, 5, 6], embed_dim=16, max_pixels=max_pixels).double()
    assert all(head.factored(f)[1] is not None for head, f in zip(module.heads, features))

    def run():
        torch.manual_seed(0)  # the same pixel subsample in both runs
        module.zero_grad()
        for f in features:
            f.grad = None
        loss = module(features, logits, target)
        loss.backward()
        grads = [p.grad.clone() for p in module.parameters()] + [f.grad for f in features]
        return loss.detach(), grads

    fast, fast_grads = run()
    monkeypatch.setattr(ProjectionHead, "factored", lambda head, x: (head.net(x), None))
    slow, slow_grads = run()
    assert fast.item() > 0
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_gradients_reach_every_projection_head_and_feature():
    features, logits, target = make_inputs(channels=(3, 4, 5, 6), sizes=((8, 10),) * 4)
    features = [f.detach().float().requires_grad_() for f in features]
    module = ContextrastLoss(N, [3, 4, 5, 6], embed_dim=8)
    loss = module(features, logits.float(), target)
    loss.backward()
    assert loss.item() > 0
    for i, head in enumerate(module.heads):
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), i
        assert any(g.abs().sum() > 0 for g in grads), i
    for f in features:
        assert f.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("channels", "sizes"),
    [((7,), ((6, 6),)), ((2, 3, 4), ((16, 20), (7, 9), (3, 2)))],
)
def test_any_number_of_layers_and_resolutions(channels, sizes):
    features, logits, target = make_inputs(channels, sizes, dtype=torch.float32)
    module = ContextrastLoss(N, channels, embed_dim=4, layer_weights=[1.0] * len(channels))
    terms = module.terms(features, logits, target)
    assert terms.layer_losses.shape == (len(channels),)
    assert torch.isfinite(terms.loss)
    terms.loss.backward()


def test_bfloat16_inputs_do_not_produce_nan():
    features, logits, target = make_inputs(dtype=torch.float32, seed=8)
    module = ContextrastLoss(N, [4, 6], embed_dim=8, layer_weights=(0.4, 1.0), temperature=0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(features, logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    module_bf16 = ContextrastLoss(N, [4, 6], embed_dim=8, layer_weights=(0.4, 1.0)).bfloat16()
    features16 = [f.detach().bfloat16().requires_grad_() for f in features]
    loss16 = module_bf16(features16, logits.bfloat16(), target)
    loss16.backward()
    assert torch.isfinite(loss16)
    assert all(torch.isfinite(f.grad).all() for f in features16)


def test_all_ignore_target_gives_zero_with_graph():
    features, logits, target = make_inputs(dtype=torch.float32)
    module = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0))
    loss = module(features, logits, torch.full_like(target, 255))
    assert loss.item() == 0.0
    loss.backward()


def test_max_pixels_bounds_the_matrix_and_keeps_hard_negatives():
    features, logits, target = make_inputs(seed=9, dtype=torch.float32)
    base = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0))
    big = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0), max_pixels=10_000)
    big.load_state_dict(base.state_dict())
    assert big(features, logits, target).item() == pytest.approx(
        base(features, logits, target).item(), rel=1e-6
    )
    small = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0), max_pixels=60)
    small.load_state_dict(base.state_dict())
    full_terms = base.terms(features, logits, target)
    small_terms = small.terms(features, logits, target)
    assert torch.isfinite(small_terms.loss)
    # Every hard negative fits in 60 pixels here, so all of them are kept.
    assert full_terms.hard_negatives[0] <= 60
    assert torch.equal(small_terms.hard_negatives, full_terms.hard_negatives)


def test_resize_labels_matches_interpolate_nearest():
    labels = torch.randint(0, 255, (2, 13, 17))
    for size in [(4, 5), (13, 17), (26, 9), (1, 1)]:
        want = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        assert torch.equal(resize_labels(labels, size), want)
    strided = torch.randint(0, 255, (2, 16, 24))  # sizes that divide: the strided path
    for size in [(8, 12), (4, 6), (16, 8), (2, 24)]:
        want = F.interpolate(strided[:, None].float(), size=size, mode="nearest")[:, 0].long()
        got = resize_labels(strided, size)
        assert torch.equal(got, want) and got.is_contiguous()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer_weights": (1.0,)}, "layer_weights has 1 entries but there are 2 layers"),
        ({"bane_ratio": 1.5}, "bane_ratio must be a number in"),
        ({"w_high": -0.1}, "w_high must be a number in"),
        ({"temperature": 0.0}, "temperature must be a number > 0"),
        ({"hard_negatives": "mix"}, "unknown hard_negatives 'mix'; choose from"),
        ({"ignore_index": 1}, "ignore_index=1 collides"),
        ({"max_pixels": 0}, "max_pixels must be a positive int"),
        ({"ignore_index": 2.5}, r"ignore_index must be an int \(255 by default\), got 2\.5"),
        ({"ignore_index": None}, "ignore_index must be an int"),
        ({"embed_dim": True}, "embed_dim must be an int >= 1, got True"),
        ({"embed_dim": 0}, "embed_dim must be an int >= 1, got 0"),
        ({"hidden_channels": 0}, "hidden_channels must be an int >= 1 or None, got 0"),
        ({"hidden_channels": 2.5}, "hidden_channels must be an int >= 1 or None, got 2.5"),
        ({"normalize_anchors": "no"}, "normalize_anchors must be True or False, got 'no'"),
        ({"global_anchors": None}, "global_anchors must be True or False, got None"),
        ({"detach_anchors": 1}, "detach_anchors must be True or False, got 1"),
        ({"validate": "maybe"}, "validate must be True or False, got 'maybe'"),
        ({"anchor_memory": 10**12}, r"anchor_memory=1000000000000: its queues need .* GiB"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = {"layer_weights": (0.4, 1.0), **kwargs}
    with pytest.raises(ValueError, match=match):
        ContextrastLoss(N, [4, 6], **args)


def test_forward_rejects_bad_inputs():
    features, logits, target = make_inputs(dtype=torch.float32)
    module = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0))
    with pytest.raises(ValueError, match="features must be a list of 2 maps"):
        module(features[:1], logits, target)
    with pytest.raises(ValueError, match=r"features\[1\] must have shape .* C=6"):
        module([features[0], features[0]], logits, target)
    with pytest.raises(ValueError, match="logits must have shape"):
        module(features, logits[:, :2], target)
    with pytest.raises(ValueError, match="target must have shape"):
        module(features, logits, target[0])
    with pytest.raises(ValueError, match=r"target must be a torch.Tensor of shape \(B, H, W\), "):
        module(features, logits, target.numpy())
    with pytest.raises(ValueError, match=r"logits must be a torch.Tensor of shape \(B, N, h, w\)"):
        module(features, logits.tolist(), target)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"target contains values \[7\]"):
        module(features, logits, bad)


@pytest.mark.parametrize("channels", [64, "64", [4, 6.0], [], [4, True], [4, -6]])
def test_in_channels_must_be_a_list_of_ints(channels):
    # Issue 20: ContextrastLoss(5, 64) failed inside list() with a TypeError.
    with pytest.raises(ValueError) as err:
        ContextrastLoss(N, channels)
    assert str(err.value) == (
        "in_channels must be a list of positive ints, one per feature layer, lowest layer "
        "first (e.g. model.feature_channels or FeatureTap.channels(images)), got "
        f"{channels!r}"
    )


def test_labels_must_share_the_maps_aspect_ratio():
    # Issue 20: 128×64 labels with 32×64 maps were resized, each axis on its own, without a
    # word (4x down the height, 1x across the width).
    g = torch.Generator().manual_seed(0)
    module = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0))
    features = [torch.randn(2, 4, 32, 64, generator=g), torch.randn(2, 6, 16, 32, generator=g)]
    logits = torch.randn(2, N, 32, 64, generator=g)
    wide = torch.randint(0, N, (2, 128, 64), generator=g)
    with pytest.raises(ValueError) as err:
        module(features, logits, wide)
    assert str(err.value) == (
        "target (labels) of size 128x64 does not match features[0] of size 32x64: 4x its "
        "height but 1x its width; the labels and every map must share one aspect ratio "
        "(labels at the input's resolution, maps at the model's strides)"
    )
    target = torch.randint(0, N, (2, 128, 256), generator=g)
    with pytest.raises(ValueError, match="does not match logits of size 64x32: 2x its height"):
        module(features, logits.transpose(2, 3), target)
    assert torch.isfinite(module(features, logits, target))
    # Odd sizes through strided layers round either way: one pixel per axis passes.
    odd = [torch.randn(2, 4, 33, 65, generator=g), torch.randn(2, 6, 17, 32, generator=g)]
    odd_target = torch.randint(0, N, (2, 130, 257), generator=g)
    assert torch.isfinite(module(odd, torch.randn(2, N, 9, 17, generator=g), odd_target))
    with pytest.raises(ValueError, match=r"features\[1\] of size 32x17: 4.06x its height"):
        module([odd[0], odd[1].transpose(2, 3)], logits, odd_target)


def test_a_label_batch_that_differs_names_the_labels():
    features, logits, target = make_inputs(dtype=torch.float32)
    module = ContextrastLoss(N, [4, 6], embed_dim=4, layer_weights=(0.4, 1.0))
    with pytest.raises(ValueError) as err:
        module(features, logits, torch.cat([target, target[:1]]))
    assert str(err.value) == (
        "target (labels) has batch 3 but the features and logits have batch 2; pass one "
        "(H, W) label map per image"
    )
    # Logits or features that differ from the other two are still named themselves.
    with pytest.raises(ValueError, match=r"logits must have shape .* B=2, N=3, got \(1, 3,"):
        module(features, logits[:1], target)
    with pytest.raises(ValueError, match=r"features\[0\] must have shape .* B=2, C=4, got \(1,"):
        module([features[0][:1], features[1]], logits, target)


def test_default_layer_weights_are_the_papers():
    module = ContextrastLoss(19, [48, 96, 192, 384])
    assert module.layer_weights == [0.1, 0.4, 0.7, 1.0]
    assert (module.w_high, module.bane_ratio, module.loss_weight) == (0.7, 0.5, 0.1)
    assert module.temperature == 0.1 and math.isclose(1 - module.w_high, 0.3)
    # The readings chosen on the real benchmark (docs/benchmarks.md), d = 128.
    assert [h.net[-1].out_channels for h in module.heads] == [128] * 4
    assert (module.hard_negatives, module.normalize_anchors) == ("add", True)
    assert (module.max_positives, module.max_negatives) == (1024, 1024)


def test_the_loss_waits_for_the_host_at_most_twice():
    """Issue 14's case (hrnetv2_w18_small's feature shapes for a 2×3×256×512 batch, 19
    classes): one forward + backward makes 2 host syncs (the label check and the loss's
    finiteness check; BANE makes none) and at most 1,000 operator calls. Counts are
    deterministic."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    shapes = [(18, 64, 128), (36, 32, 64), (72, 16, 32), (144, 8, 16)]
    features = [torch.randn(2, *s, generator=g).requires_grad_() for s in shapes]
    logits = torch.randn(2, 19, 64, 128, generator=g)
    coarse = torch.randint(0, 19, (2, 1, 8, 16), generator=g).float()
    target = F.interpolate(coarse, size=(256, 512), mode="nearest")[:, 0].long()
    loss = ContextrastLoss(19, [s[0] for s in shapes])
    loss(features, logits, target).backward()
    # PyTorch runs a batch-2 1×1 convolution (the projection heads') through oneDNN with two
    # or more threads and through its native kernel with one, whose backward records ~10
    # more sub-operations per convolution: the count is taken at two threads.
    syncs = ("aten::_local_scalar_dense", "aten::nonzero", "aten::unique", "aten::_unique2")

    def operators() -> list[str]:
        # Default algorithms: a Trainer with run.deterministic earlier in this process leaves
        # deterministic mode on, which fills every new tensor (hundreds more operators).
        threads, deterministic = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
        )
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(False)
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                loss(features, logits, target).backward()
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        return [e.name for e in prof.events() if e.name.startswith("aten::")]

    names = operators()
    assert sum(n in syncs for n in names) == 2
    assert len(names) <= 1000  # issue 14's bound (3,923 before the layers were batched)
    # validate=False (what the trainer runs: labels checked up front, the loss watched on
    # the device) waits for the host not once, and costs no more operators.
    loss.validate = False
    unchecked = operators()
    assert sum(n in syncs for n in unchecked) == 0
    assert len(unchecked) < len(names)
    # Contextrast++'s parts add operators, and no wait: 1,575 with both (docs/method.md).
    loss = ContextrastLoss(
        19, [s[0] for s in shapes], anchor_fusion="adaptive", anchor_memory=100, validate=False
    )
    loss(features, logits, target).backward()  # the memory holds anchors: L_AA runs
    plus = operators()
    assert sum(n in syncs for n in plus) == 0 and len(unchecked) < len(plus) <= 1600
    # The sparse form ("auto" from 20 classes on) waits for the host not once either,
    # and launches more operators (sorts, per-pixel gathers): 1,305 here (docs/method.md).
    loss = ContextrastLoss(19, [s[0] for s in shapes], pair_form="sparse", validate=False)
    loss(features, logits, target).backward()
    sparse = operators()
    assert sum(n in syncs for n in sparse) == 0 and len(unchecked) < len(sparse) <= 1310


@pytest.mark.parametrize("classes, form", [(19, "dense"), (20, "sparse")])
def test_auto_scores_the_pairs_densely_below_20_classes_and_sparsely_from_20(classes, form):
    """pair_form="auto" is the dense form below ``SPARSE_FROM_CLASSES`` and the sparse one
    from it on: the same draw (same seed) to the bit; the other form draws otherwise."""
    assert CF.loss.SPARSE_FROM_CLASSES == 20
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 4, 16, 20, generator=g), torch.randn(2, 6, 8, 10, generator=g)]
    target = torch.randint(0, classes, (2, 32, 40), generator=g)
    logits = torch.randn(2, classes, 16, 20, generator=g)

    def run(pair_form):
        torch.manual_seed(0)
        loss = ContextrastLoss(
            classes, (4, 6), layer_weights=(0.5, 1.0), max_positives=3, max_negatives=3,
            pair_form=pair_form,
        )  # fmt: skip
        return loss(features, logits, target)

    other = {"dense": "sparse", "sparse": "dense"}[form]
    assert torch.equal(run("auto"), run(form)) and not torch.equal(run("auto"), run(other))


@pytest.mark.parametrize("embed_dim", [3, 8])  # 8 > hidden + 1: the large layer is factored
@pytest.mark.parametrize("mode", ["add", "only"])
@pytest.mark.parametrize("sizes", [((4, 5), (2, 3)), ((6, 8), (2, 3), (2, 2))])
def test_feature_gradients_match_finite_differences(embed_dim, mode, sizes):
    """The loss's written-out gradients (functional's layer_sums, layer_similarity and
    InfoNCE) against finite differences of the whole loss, in float64. With three layers the
    two small ones are formed and scored as one group."""
    channels = (2, 3, 2)[: len(sizes)]
    features, logits, target = make_inputs(channels=channels, sizes=sizes, seed=3)
    module = ContextrastLoss(
        N, channels, embed_dim=embed_dim, layer_weights=(0.4, 0.7, 1.0)[-len(sizes) :],
        hard_negatives=mode,
    ).double()  # fmt: skip
    assert module(features, logits, target).item() > 0
    assert torch.autograd.gradcheck(lambda *f: module(list(f), logits, target), features)


@pytest.mark.parametrize("embed_dim", [5, 16])
def test_three_layers_with_a_formed_group_match_reference(embed_dim):
    # Shares of pixels 0.79 / 0.20 / 0.06: the first layer is factored (embed_dim 16), the
    # other two are formed and scored as one group; the loss is the paper's all the same.
    features, logits, target = make_inputs(
        channels=(4, 6, 5), sizes=((8, 10), (4, 5), (2, 3)), seed=11
    )
    module = ContextrastLoss(
        N, [4, 6, 5], embed_dim=embed_dim, layer_weights=(0.1, 0.4, 1.0), hard_negatives="add"
    ).double()
    hard = module_hard_negatives(module, features, logits, target)
    terms = module.terms(features, logits, target)
    want, want_layers = reference_loss(module, features, logits, target, hard)
    assert terms.loss.item() == pytest.approx(want, rel=1e-9)
    np.testing.assert_allclose(terms.layer_losses.numpy(), want_layers, rtol=1e-9)
    assert terms.hard_negatives.tolist() == [int(h.sum()) for h in hard]


def test_a_non_finite_batch_leaves_the_heads_statistics_usable():
    """The error comes after the heads' BatchNorm saw the maps: its poisoned running
    statistics are reset (as a fresh head's), so a loop that skips the batch goes on."""
    torch.manual_seed(0)
    loss = ContextrastLoss(3, [8, 16], layer_weights=(0.5, 1.0))
    features = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    logits, target = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    bad = [features[0], features[1].clone().fill_(float("inf"))]
    with pytest.raises(ValueError, match=r"features\[1\] hold NaN or inf values; 1 projection-"
                       r"head BatchNorm layers had their statistics reset"):  # fmt: skip
        loss(bad, logits, target)
    for module in loss.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.isfinite(module.running_mean).all()
            assert torch.isfinite(module.running_var).all()
    loss.eval()
    assert torch.isfinite(loss(features, logits, target))


def test_an_empty_batch_is_a_one_line_error():
    loss = ContextrastLoss(3, [8, 16], layer_weights=(0.5, 1.0))
    features = [torch.randn(0, 8, 16, 16), torch.randn(0, 16, 8, 8)]
    with pytest.raises(ValueError, match=r"target has shape \(0, 16, 16\): an empty batch"):
        loss(features, torch.randn(0, 3, 16, 16), torch.zeros(0, 16, 16, dtype=torch.long))


def scheduled(**options):
    torch.manual_seed(0)
    return ContextrastLoss(N, [4, 6], embed_dim=8, layer_weights=(0.4, 1.0), max_positives=None,
                           max_negatives=None, **options).double()  # fmt: skip


def test_schedule_weight_by_hand():
    loss = scheduled(start_step=2, ramp_steps=4)
    assert [loss.weight_at(s) for s in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert scheduled(start_step=3).weight_at(2) == 0 and scheduled(start_step=3).weight_at(3) == 1
    assert scheduled().weight_at(None) == 1 and not scheduled().scheduled
    early = scheduled(ramp_steps=2, stop_step=5)
    assert early.scheduled and [early.weight_at(s) for s in range(7)] == [0.5, 1, 1, 1, 1, 0, 0]
    assert [scheduled(start_step=2, stop_step=3).weight_at(s) for s in range(5)] == [0, 0, 1, 0, 0]


def test_ramped_loss_is_the_weight_times_the_plain_loss():
    features, logits, target = make_inputs()
    plain = scheduled()(features, logits, target).detach()
    ramped = scheduled(ramp_steps=4)
    assert ramped(features, logits, target, step=1).item() == pytest.approx(0.5 * plain.item())
    off = scheduled(start_step=5)(features, logits, target, step=4)
    assert off.item() == 0 and off.requires_grad  # still in the graph (DDP sees one graph)
    stopped = scheduled(stop_step=3)
    assert stopped(features, logits, target, step=2).item() == pytest.approx(plain.item(), 1e-12)
    off = stopped(features, logits, target, step=3)
    assert off.item() == 0 and off.requires_grad
    assert scheduled(start_step=5)(features, logits, target, step=5).item() == pytest.approx(
        plain.item(), rel=1e-12
    )


def test_bane_starts_at_its_step():
    features, logits, target = make_inputs()
    ccl = scheduled(bane_ratio=0.0)(features, logits, target)
    bane = scheduled()(features, logits, target)
    assert bane.item() != pytest.approx(ccl.item())
    late = scheduled(bane_start_step=3)
    assert late.terms(features, logits, target, step=2).hard_negatives.sum() == 0
    assert late(features, logits, target, step=2).item() == pytest.approx(ccl.item(), rel=1e-12)
    assert late(features, logits, target, step=3).item() == pytest.approx(bane.item(), rel=1e-12)


def test_the_encoder_gets_the_term_s_gradient_from_its_step_on():
    features, logits, target = make_inputs()
    loss = scheduled(encoder_start_step=3)
    assert loss.scheduled and "encoder_start_step=3" in repr(loss)
    values = []
    for step, reaches in ((2, False), (3, True)):
        inputs = [f.detach().requires_grad_() for f in features]
        loss.zero_grad()
        value = loss(inputs, logits, target, step=step)
        value.backward()
        values.append(value.item())
        assert all((x.grad is not None) == reaches for x in inputs)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.heads.parameters())
    assert values[0] == pytest.approx(values[1], rel=1e-12)  # the same loss, either way
    with pytest.raises(ValueError, match=r"encoder_start_step must be an int >= 0"):
        scheduled(encoder_start_step=-1)


def test_a_schedule_without_step_or_with_a_bad_value_is_one_clear_error():
    features, logits, target = make_inputs()
    with pytest.raises(ValueError, match=r"has a schedule .*: pass step="):
        scheduled(ramp_steps=2)(features, logits, target)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"start_step must be an int >= 0"):
            scheduled(start_step=bad)
        with pytest.raises(ValueError, match=r"stop_step must be an int >= 0"):
            scheduled(stop_step=bad)
    for stop in (0, 4, 6):
        with pytest.raises(ValueError, match=rf"stop_step={stop} must be >= start_step \+ ramp"):
            scheduled(start_step=4, ramp_steps=3, stop_step=stop)
    for name in ("bane_start_step", "encoder_start_step"):
        with pytest.raises(ValueError, match=rf"{name}=5 >= stop_step=5: it would never take"):
            scheduled(**{name: 5}, stop_step=5)
    loss = scheduled(bane_start_step=3)
    for bad in (-1, 2.5, True, float("nan"), "3", torch.tensor([3, 4])):
        with pytest.raises(ValueError, match=r"^step must be an int >= 0, got "):
            loss(features, logits, target, step=bad)
    # Any integer type is a step, and an int-like option is an option.
    value = loss(features, logits, target, step=np.int64(3)).item()
    assert value == loss(features, logits, target, step=torch.tensor(3)).item()
    assert scheduled(bane_start_step=np.int64(3), loss_weight=np.float32(0.1)).bane_start_step == 3


def test_the_module_refuses_reversed_layers_a_bad_weight_and_nan_logits():
    from contextrast.contrast import NonFiniteError
    from contextrast.contrast.sampling import BaneSampler

    features, logits, target = make_inputs()
    loss = ContextrastLoss(N, [4, 6], embed_dim=8, layer_weights=(0.4, 1.0)).double()
    with pytest.raises(ValueError, match=r"features\[1\] \(8x10\) is larger than features\[0\]"):
        ContextrastLoss(N, [6, 4], embed_dim=8, layer_weights=(0.4, 1.0)).double()(
            features[::-1], logits, target
        )
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"loss_weight must be a finite number >= 0"):
            ContextrastLoss(N, [4, 6], layer_weights=(0.4, 1.0), loss_weight=bad)
    with pytest.raises(NonFiniteError, match=r"logits hold NaN or inf values"):
        loss(features, torch.full_like(logits, float("nan")), target)
    assert math.isfinite(loss(features, logits, target).item())
    # A sampler with its own K: the loss's bane_ratio must say the same (or 0: off).
    with pytest.raises(ValueError, match=r"bane_ratio=0.1 but negatives=BaneSampler\(ratio=0.9\)"):
        ContextrastLoss(N, [4, 6], layer_weights=(0.4, 1.0), bane_ratio=0.1,
                        negatives=BaneSampler(0.9))  # fmt: skip
    same = ContextrastLoss(N, [4, 6], layer_weights=(0.4, 1.0), bane_ratio=0.9,
                           negatives=BaneSampler(0.9))  # fmt: skip
    assert same.bane_ratio == 0.9 and "bane_ratio=0.9" in repr(same)


def test_anchor_memory_adds_the_anchor_term_once_its_queues_hold_anchors():
    from contextrast.functional import reference as R

    features, logits, target = make_inputs()
    args = {"embed_dim": 8, "layer_weights": (0.4, 1.0), "max_positives": None,
            "max_negatives": None}  # fmt: skip
    base = ContextrastLoss(N, [4, 6], **args).double()
    plus = ContextrastLoss(N, [4, 6], **args, anchor_memory=2).double()
    plus.heads.load_state_dict(base.heads.state_dict())
    assert "anchor_memory=2" in repr(plus) and "memory.keys" in plus.state_dict()
    # Empty queues: no term, the loss is Contextrast's; then each present class is pushed.
    first = plus.terms(features, logits, target)
    assert first.anchor_loss.item() == 0.0
    assert first.loss.item() == pytest.approx(base.terms(features, logits, target).loss.item())
    pushed, present = R.class_prioritized_anchors(first.anchors.detach(), first.class_counts)
    assert plus.memory.count.tolist() == present.long().tolist()
    # Second step: L_AA of the same queries against the first step's (normalised) anchors.
    second = plus.terms(features, logits, target)
    queries, present = R.class_prioritized_anchors(second.anchors, second.class_counts)
    keep = present.nonzero().flatten()
    want = R.anchor_anchor_loss(
        F.normalize(queries[keep], dim=1), keep, F.normalize(pushed[keep], dim=1), keep, 0.1
    )
    pa = sum(w * x for w, x in zip((0.4, 1.0), second.layer_losses))
    assert second.anchor_loss.item() == pytest.approx(want.item(), rel=1e-9)
    assert second.loss.item() == pytest.approx(0.1 * (pa + want).item(), rel=1e-9)
    second.loss.backward()  # L_AA's gradient reaches the heads through the anchors
    # Evaluation never writes to the memory; a copy restores the queues exactly.
    plus.eval()
    before = {k: v.clone() for k, v in plus.state_dict().items() if k.startswith("memory")}
    plus.terms(features, logits, target)
    assert all(torch.equal(v, plus.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"anchor_memory must be an int >= 1 or None, got 0"):
        ContextrastLoss(N, [4, 6], layer_weights=(0.4, 1.0), anchor_memory=0)


def test_the_anchor_term_leaves_the_callers_autocast():
    # bf16 autocast (optim.amp) must not round L_AA: on the same anchors it equals float32.
    from contextrast import ContextrastTerms

    g = torch.Generator().manual_seed(0)
    loss = ContextrastLoss(N, [4, 6], embed_dim=8, layer_weights=(0.4, 1.0), anchor_memory=3)
    loss.memory.push_rows(F.normalize(torch.randn(N, 8, generator=g), dim=1), torch.ones(N) > 0)
    anchors, counts = torch.randn(2, N, 8, generator=g), torch.ones(N, 2)
    terms = ContextrastTerms(torch.zeros(()), torch.zeros(2), torch.zeros(2), anchors, counts)
    loss.eval()  # no push: both calls see the same memory
    want = loss._with_anchor_memory(terms, 1.0).anchor_loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss._with_anchor_memory(terms, 1.0).anchor_loss
    assert got.dtype == torch.float32 and got.item() == want.item() > 0


def test_adaptive_fusion_is_the_module_s_own_trained_part():
    from contextrast.functional import reference as R

    features, logits, target = make_inputs()
    args = {"embed_dim": 8, "layer_weights": (0.4, 1.0), "max_positives": None,
            "max_negatives": None, "bane_ratio": 0.0}  # fmt: skip
    fixed = ContextrastLoss(N, [4, 6], **args).double()
    assert fixed.fusion is None and not any("fusion" in k for k in fixed.state_dict())
    adaptive = ContextrastLoss(N, [4, 6], **args, anchor_fusion="adaptive").double()
    adaptive.heads.load_state_dict(fixed.heads.state_dict())
    assert "anchor_fusion='adaptive'" in repr(adaptive)
    assert {k for k in adaptive.state_dict() if k.startswith("fusion.")} == {
        f"fusion.{name}" for name in ("query", "key", "value", "hidden", "hidden_bias", "out",
                                      "out_bias")
    }  # fmt: skip
    adaptive.eval()  # the heads as plain functions, for the reference
    got = adaptive.terms(features, logits, target)
    embeddings = [head.net(f) for head, f in zip(adaptive.heads, features)]
    want, _, _ = R.contextrast_loss(
        embeddings, logits, target, temperature=0.1, layer_weights=(0.4, 1.0), w_high=0.7,
        bane_ratio=0.0, loss_weight=0.1, ignore_index=255, hard_negatives="add",
        normalize_anchors=True, fusion=adaptive.fusion.weights(),
    )  # fmt: skip
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-9)
    assert got.loss.item() != pytest.approx(
        fixed.eval().terms(features, logits, target).loss.item()
    )
    got.loss.backward()  # the fusion learns from the pixel-anchor loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adaptive.fusion.parameters())
    # the residual reading: the module starts at 0, so the loss starts as Contextrast's
    residual = ContextrastLoss(N, [4, 6], **args, anchor_fusion="residual").double()
    residual.heads.load_state_dict(fixed.heads.state_dict())
    start = residual.eval().terms(features, logits, target)
    plain = fixed.eval().terms(features, logits, target).loss.item()
    assert start.loss.item() == pytest.approx(plain, rel=1e-12)
    start.loss.backward()
    assert residual.fusion.out.grad.abs().sum() > 0  # and it learns a correction
    with pytest.raises(ValueError, match=r"unknown anchor_fusion 'learned'; choose from \['fixed'"):
        ContextrastLoss(N, [4, 6], layer_weights=(0.4, 1.0), anchor_fusion="learned")
    with pytest.raises(ValueError, match=r"anchor_fusion='adaptive' .* needs 2 layers or more"):
        ContextrastLoss(N, [6], layer_weights=(1.0,), anchor_fusion="adaptive")


def test_num_classes_takes_any_integer_type_and_refuses_the_rest():
    import numpy as np

    assert ContextrastLoss(np.int64(3), [4, 6], layer_weights=(0.4, 1.0)).num_classes == 3
    assert (
        type(ContextrastLoss(torch.tensor(3), [4, 6], layer_weights=(0.4, 1.0)).num_classes) is int
    )
    for bad in (1, True, 3.0, "3", None):
        with pytest.raises(ValueError, match=r"num_classes must be an int >= 2, got"):
            ContextrastLoss(bad, [4, 6], layer_weights=(0.4, 1.0))
