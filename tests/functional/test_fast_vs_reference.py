"""The fast path (functional.batched / functional.loss, what the training step runs) against
the paper as code (functional.reference), at realistic shapes: all four layers, 12 classes,
float64 and bfloat16 autocast, with its gradients; and the guarantees the fast path's
machinery makes (double backward refused, caches that no caller can corrupt)."""

import pytest
import torch
import torch.nn.functional as F

from contextrast import ContextrastLoss
from contextrast import functional as CF
from contextrast.contrast.sampling import BaneSampler, PixelSampler
from contextrast.functional import _cache
from contextrast.functional import reference as R

N = 12
SIZES = ((32, 48), (16, 24), (8, 12), (4, 6))  # strides 4–32 of a 128×192 crop
CHANNELS = (6, 10, 14, 18)
HYPER = dict(temperature=0.1, layer_weights=(0.1, 0.4, 0.7, 1.0), w_high=0.7, loss_weight=0.1)


def make_case(seed: int, dtype=torch.float64, d: int = 16):
    """Blocky ground truth with an ignore band, a prediction right on most pixels, and
    random embeddings of every layer."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, N, (2, 1, 8, 12), generator=g).double()
    target = F.interpolate(coarse, size=(128, 192), mode="nearest")[:, 0].long()  # (B, H, W)
    target[:, :6] = 255
    truth = F.one_hot(F.interpolate(coarse, size=(32, 48))[:, 0].long(), N).permute(0, 3, 1, 2)
    logits = torch.randn(2, N, 32, 48, generator=g, dtype=dtype) + 1.5 * truth.to(dtype)
    embeddings = [
        torch.randn(2, d, h, w, generator=g, dtype=dtype).requires_grad_() for h, w in SIZES
    ]
    return embeddings, logits, target


def picked(embeddings, logits, target, sampler, validate=True):
    """The one-way call's first steps: the layers' targets, and the sampler's pick on them."""
    sizes = [tuple(e.shape[-2:]) for e in embeddings]
    targets = CF.layer_targets(logits, target, sizes, 255, validate)
    if sampler is None:
        return targets, None
    return targets, sampler(targets.labels, targets.pred, num_classes=N, layout=targets.layout)


def fast(
    embeddings, logits, target, mode="add", ratio=0.5, normalize=True, validate=True, form="auto"
):
    sampler = BaneSampler(ratio, validate=False) if ratio > 0 else None
    targets, hard = picked(embeddings, logits, target, sampler, validate)
    return CF.contextrast_loss(
        embeddings, logits, target, **HYPER, ignore_index=255, hard=hard, targets=targets,
        hard_negatives=mode, max_pixels=None, max_positives=None, max_negatives=None,
        normalize_anchors=normalize, detach_anchors=False, global_anchors=False,
        validate=validate, pair_form=form,
    )  # fmt: skip


def reference(embeddings, logits, target, mode="add", ratio=0.5, normalize=True):
    return R.contextrast_loss(
        embeddings, logits, target, **HYPER, bane_ratio=ratio, ignore_index=255,
        hard_negatives=mode, normalize_anchors=normalize,
    )  # fmt: skip


@pytest.mark.parametrize("form", ["dense", "sparse"])
@pytest.mark.parametrize(
    "mode, ratio, normalize",
    [("add", 0.5, True), ("only", 0.5, True), ("include", 0.5, False), ("add", 0.0, False)],
)
def test_fast_loss_equals_the_reference_and_so_do_its_gradients(mode, ratio, normalize, form):
    embeddings, logits, target = make_case(seed=1)
    got = fast(embeddings, logits, target, mode, ratio, normalize, form=form)
    (got_grads) = torch.autograd.grad(got.loss, embeddings)
    loss, layers, hard = reference(embeddings, logits, target, mode, ratio, normalize)
    want_grads = torch.autograd.grad(loss, embeddings)
    assert torch.equal(got.hard_negatives, hard)
    assert (hard > 0).all() if ratio > 0 else (hard == 0).all()  # BANE picked on every layer
    assert torch.allclose(got.layer_losses, layers, rtol=1e-10, atol=0)
    assert got.loss.item() == pytest.approx(loss.item(), rel=1e-10)
    for a, b in zip(got_grads, want_grads):
        assert b.abs().sum() > 0
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_fast_loss_under_bf16_autocast_equals_the_reference_on_the_same_embeddings(form):
    # Under autocast the heads emit bfloat16; both paths then compute in float32.
    embeddings, logits, target = make_case(seed=2, dtype=torch.float32)
    low = [e.detach().bfloat16().requires_grad_() for e in embeddings]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast(low, logits, target, form=form)
        loss, _, hard = reference(low, logits, target)
    assert got.loss.dtype == torch.float32 and torch.equal(got.hard_negatives, hard)
    assert got.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    got_grads = torch.autograd.grad(got.loss, low)
    want_grads = torch.autograd.grad(loss, low)
    for a, b in zip(got_grads, want_grads):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b.float()).norm() <= 1e-2 * b.float().norm()


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_the_module_with_factored_heads_equals_the_reference_on_its_embeddings(form):
    # ContextrastLoss factors its largest layer (v = lift @ c, never formed): the reference
    # gets the formed embeddings of the same heads.
    _, logits, target = make_case(seed=3)
    g = torch.Generator().manual_seed(3)
    features = [
        torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
        for c, (h, w) in zip(CHANNELS, SIZES)
    ]
    module = ContextrastLoss(
        N, CHANNELS, embed_dim=32, max_positives=None, max_negatives=None, pair_form=form
    ).double()
    module.eval()  # BatchNorm on running statistics: the heads are plain functions
    terms = module.terms(features, logits, target)
    embedded = module._embed(features)
    assert embedded[0][1] is not None  # the stride-4 layer is factored
    loss, _layers, hard = reference(
        [h.net(f) for h, f in zip(module.heads, features)], logits, target
    )
    assert torch.equal(terms.hard_negatives, hard)
    assert terms.loss.item() == pytest.approx(loss.item(), rel=1e-10)
    got = torch.autograd.grad(terms.loss, list(module.parameters()))
    want = torch.autograd.grad(loss, list(module.parameters()))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)


def test_reference_pieces_agree_with_the_fast_pieces():
    _embeddings, logits, target = make_case(seed=4)
    pred = logits.argmax(1)
    layout = CF.batched.layer_layout(2, SIZES, target.device)
    labels = CF.batched.gather_layers(target, layout)
    layer_pred = CF.batched.gather_layers(pred, layout)
    errors = CF.batched.error_labels(layer_pred, labels, N)
    distance = CF.batched.error_distance(errors, N, layout)
    chosen = CF.batched.bane_select_labels(distance, errors, N, 0.5, layout.segments)
    start = 0
    for (h, w), count in zip(SIZES, layout.segments.counts):
        part = slice(start, start + count)
        start += count
        g = R.loss._nearest(target, (h, w))
        y = R.loss._nearest(pred, (h, w))
        assert torch.equal(labels[part].view(2, h, w), g)  # gather_layers: nearest resize
        maps = R.class_error_maps(y, g, N)  # eq. 6
        assert torch.equal(
            errors[part].view(2, h, w).unsqueeze(1) == torch.arange(N).view(1, N, 1, 1), maps
        )
        d = R.distance_map(maps)  # eq. 7, brute force
        own = torch.where(maps, d, 0.0).sum(1)  # each error pixel's own class's distance
        assert torch.allclose(distance[part].view(2, h, w).double(), own)
        picked = R.bane_select(d, maps, 0.5).any(1)  # BANE, class by class
        assert torch.equal(chosen[part].view(2, h, w), picked)
        rows = R.hard_negative_mask(picked.reshape(-1), y.reshape(-1), N)
        assert torch.equal(
            CF.batched.hard_negative_mask(picked.reshape(-1), y.reshape(-1), N), rows
        )


def test_fast_anchor_update_equals_the_reference():
    g = torch.Generator().manual_seed(5)
    anchors = torch.randn(4, N, 8, generator=g, dtype=torch.float64)
    present = torch.rand(N, generator=g) > 0.3
    for normalize in (False, True):
        fused = CF.batched.fuse_anchors(anchors, present, 0.7, normalize)
        want = R.updated_anchors(list(anchors), 0.7, present, normalize)
        assert torch.allclose(fused, torch.stack(want), rtol=1e-12, atol=1e-15)


def test_written_out_gradients_refuse_double_backward():
    embeddings, logits, target = make_case(seed=6, d=4)
    loss = fast(embeddings, logits, target).loss
    (grad,) = torch.autograd.grad(loss, embeddings[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_no_caller_can_corrupt_a_cached_tensor():
    cpu = torch.device("cpu")
    CF.batched.class_rows(5, cpu).fill_(0)  # a caller edits a returned tensor in place
    assert CF.batched.class_rows(5, cpu).view(-1).tolist() == [0, 1, 2, 3, 4]
    CF.batched.constant(2.0, torch.float32, cpu).add_(1.0)
    assert CF.batched.constant(2.0, torch.float32, cpu).item() == 2.0
    embeddings, logits, target = make_case(seed=7, d=4)
    before = fast(embeddings, logits, target).loss.item()
    layout = CF.batched.layer_layout(2, SIZES, cpu)
    for tensor in _cache._tensors(layout):
        tensor.view(-1)[:1].fill_(3)  # every cached tensor of the step's layout, in place
    assert fast(embeddings, logits, target).loss.item() == before


def test_evaluation_does_not_fill_the_training_layout_cache():
    CF.batched.layer_layout.cache_clear()
    mask = torch.rand(3, 40, 50) < 0.5
    CF.distance_transform(mask)
    assert CF.batched.layer_layout.cache_size() == 0
    with torch.inference_mode():  # a cache filled under inference mode still trains
        layout = CF.batched.layer_layout(1, ((4, 4),), torch.device("cpu"))
    assert not layout.segments.ids.is_inference()


def test_a_custom_sampler_plugs_into_the_loss():
    class EveryError(PixelSampler):
        """Every error pixel is a hard negative: BANE at K = 1."""

        def select(self, labels, pred, num_classes=None, layout=None):
            self.seen = (labels.shape, layout.segments.counts)
            return (labels != pred) & (labels != 255)

    g = torch.Generator().manual_seed(8)
    features = [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, SIZES)]
    _, logits, target = make_case(seed=8, dtype=torch.float32)
    custom_sampler = EveryError()
    custom = ContextrastLoss(N, CHANNELS, negatives=custom_sampler, max_positives=None,
                             max_negatives=None)  # fmt: skip
    bane = ContextrastLoss(N, CHANNELS, bane_ratio=1.0, max_positives=None, max_negatives=None)
    bane.load_state_dict(custom.state_dict())
    got, want = custom.terms(features, logits, target), bane.terms(features, logits, target)
    m = sum(2 * h * w for h, w in SIZES)
    assert custom_sampler.seen == ((m,), tuple(2 * h * w for h, w in SIZES))
    assert torch.equal(got.hard_negatives, want.hard_negatives) and got.hard_negatives.sum() > 0
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
    assert "EveryError" in repr(custom)
    with pytest.raises(ValueError, match="PixelSampler instance"):
        ContextrastLoss(N, CHANNELS, negatives=lambda labels, pred: labels)


def test_bad_options_are_one_line_errors_at_both_entries():
    embeddings, logits, target = make_case(seed=9, d=4)
    for options, match in [
        ({"hard_negatives": "bogus"}, "unknown hard_negatives 'bogus'"),
        ({"w_high": float("nan")}, r"w_high must be a number in \[0, 1\]"),
        ({"temperature": 0.0}, "temperature must be a number > 0"),
        ({"max_pixels": 0}, "max_pixels must be a positive int or None"),
        ({"layer_weights": (1.0, 1.0)}, "2 entries but there are 4 layers"),
    ]:
        kwargs = dict(
            HYPER, ignore_index=255, hard=None, hard_negatives="add", max_pixels=None,
            max_positives=None, max_negatives=None, normalize_anchors=True,
            detach_anchors=False, global_anchors=False,
        )  # fmt: skip
        kwargs.update(options)
        with pytest.raises(ValueError, match=match):
            CF.contextrast_loss(embeddings, logits, target, **kwargs)
    # targets of other sizes, or a pick that is not a mask of their flat axis
    good = dict(kwargs, **HYPER, hard_negatives="add", max_pixels=None)
    targets, hard = picked(embeddings, logits, target, BaneSampler(0.5, validate=False))
    other = CF.layer_targets(logits, target, [(8, 12)] * 4)
    with pytest.raises(ValueError, match=r"targets must be layer_targets.*sizes \[\(32, 48\)"):
        CF.contextrast_loss(embeddings, logits, target, **good, targets=other)
    with pytest.raises(ValueError, match=r"targets must be layer_targets.*got <class 'tuple'>"):
        CF.contextrast_loss(embeddings, logits, target, **good, targets=tuple(targets))
    with pytest.raises(ValueError, match=r"hard must be a bool mask of the layers' flat axis"):
        CF.contextrast_loss(embeddings, logits, target, **{**good, "hard": hard[:-1]})
    given = CF.contextrast_loss(embeddings, logits, target, **{**good, "hard": hard})
    made = CF.contextrast_loss(
        embeddings, logits, target, **{**good, "hard": hard}, targets=targets
    )  # its own layer_targets equal the caller's
    assert given.loss.item() == made.loss.item() == fast(embeddings, logits, target).loss.item()
    with pytest.raises(ValueError, match="unknown hard_negatives"):
        R.contextrast_loss(
            embeddings, logits, target, **HYPER, bane_ratio=0.5, ignore_index=255,
            hard_negatives="bogus", normalize_anchors=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="target must be an integer tensor"):
        reference(embeddings, logits, target.double())
    with pytest.raises(ValueError, match="at least one positive"):
        R.info_nce(torch.ones(2), torch.zeros(0, 2), torch.ones(3, 2), 0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        R.info_nce(torch.ones(2), torch.ones(1, 2), torch.ones(3, 2), 0.0)
    with pytest.raises(ValueError, match="w_high must be a number"):
        R.updated_anchors([torch.ones(2, 3)] * 2, 2.0)
    CF.check_labels(torch.zeros(0, 4, 4, dtype=torch.long), 3, 255)  # empty: nothing to check


def test_per_image_samplers_pick_on_each_layer_of_the_flat_axis():
    # One contract: the peers' per-image samplers serve ContextrastLoss too. On the flat axis
    # they pick per layer, on (B, h·w) maps, exactly as on each layer's maps by hand.
    from contextrast.contrast import BalancedRandomSampler, HardAnchorSampler

    g = torch.Generator().manual_seed(10)
    features = [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, SIZES)]
    _, logits, target = make_case(seed=10, dtype=torch.float32)
    targets = CF.layer_targets(logits, target, SIZES)
    for sampler in (HardAnchorSampler(max_samples=64, max_views=8), BalancedRandomSampler()):
        torch.manual_seed(0)
        flat = sampler(targets.labels, targets.pred, num_classes=N, layout=targets.layout)
        torch.manual_seed(0)
        by_hand = [
            sampler(labels.view(2, -1), pred.view(2, -1)).reshape(-1)
            for labels, pred in zip(
                targets.labels.split(targets.layout.segments.counts),
                targets.pred.split(targets.layout.segments.counts),
            )
        ]
        assert torch.equal(flat, torch.cat(by_hand)) and flat.any()
        loss = ContextrastLoss(N, CHANNELS, negatives=sampler)
        assert torch.isfinite(loss(features, logits, target))
    with pytest.raises(ValueError, match=r"with a layout, labels must be the \(M,\) flat axis"):
        HardAnchorSampler()(target, target, num_classes=N, layout=targets.layout)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            "reversed",
            r"embeddings\[1\] \(8x12\) is larger than embeddings\[0\] \(4x6\): give the "
            r"layers lowest first",
        ),
        ("transposed", r"target \(labels\) of size 192x128 does not match embeddings\[0\]"),
        ("batch", r"logits have batch 2 but target \(labels\) has 1"),
        ("embedding_batch", r"embeddings\[2\] has batch 1 but target \(labels\) has 2"),
        ("flat", r"embeddings\[0\] must be a \(B, d, h, w\) map, got \(2, 16, 1536\)"),
        ("width", r"the embeddings must share one size d, got \[8, 16\]"),
        ("negative_weight", r"loss_weight must be a finite number >= 0, got -1"),
        ("nan_weight", r"loss_weight must be a finite number >= 0, got nan"),
    ],
)
def test_the_functional_entry_names_a_bad_input_in_one_line(change, match):
    embeddings, logits, target = make_case(seed=3)
    weight = HYPER["loss_weight"]
    if change == "reversed":  # highest layer first, as from a reversed in_channels list
        embeddings = embeddings[::-1]
    elif change == "transposed":
        target = target.transpose(1, 2).contiguous()
    elif change == "batch":
        target = target[:1]
    elif change == "embedding_batch":
        embeddings[2] = embeddings[2][:1]
    elif change == "flat":
        embeddings[0] = embeddings[0].flatten(2)
    elif change == "width":
        embeddings[1] = embeddings[1][:, :8]
    else:
        weight = -1 if change == "negative_weight" else float("nan")
    with pytest.raises(ValueError, match=match):
        CF.contextrast_loss(
            embeddings, logits, target, **{**HYPER, "loss_weight": weight}, ignore_index=255,
            hard=None, hard_negatives="add", max_pixels=None, max_positives=None,
            max_negatives=None, normalize_anchors=True, detach_anchors=False,
            global_anchors=False,
        )  # fmt: skip
    if "weight" not in change:  # the reference reads the same inputs the same way
        with pytest.raises(ValueError, match=match):
            R.contextrast_loss(
                embeddings, logits, target, **HYPER, bane_ratio=0.5, ignore_index=255,
                hard_negatives="add", normalize_anchors=True,
            )  # fmt: skip


def test_the_functional_entry_names_nan_inputs_as_the_module_does():
    embeddings, logits, target = make_case(seed=3)
    with torch.no_grad():
        embeddings[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(CF.NonFiniteError, match=r"^embeddings\[2\] hold NaN or inf values$"):
        fast(embeddings, logits, target)
    embeddings, logits, target = make_case(seed=3)
    with pytest.raises(CF.NonFiniteError, match=r"^logits hold NaN or inf values"):
        fast(embeddings, torch.full_like(logits, float("nan")), target)
    # validate=False: the caller checked; nothing synchronises, the NaN comes back
    with torch.no_grad():
        embeddings[0].fill_(float("inf"))
    assert fast(embeddings, logits, target, validate=False).loss.isnan()


@pytest.mark.parametrize(
    ("returns", "got"),
    [
        (lambda labels: labels != 0, None),  # the contract: a (M,) bool mask
        (lambda labels: (labels != 0).long(), r"torch.int64 \(\d+,\) on cpu"),
        (lambda labels: labels[:5] != 0, r"torch.bool \(5,\) on cpu"),
        (lambda labels: [True], r"list"),
    ],
)
def test_a_hand_made_pick_is_held_to_the_contract(returns, got):
    embeddings, logits, target = make_case(seed=4)
    targets = CF.layer_targets(logits, target, SIZES)
    kwargs = dict(
        HYPER, ignore_index=255, hard=returns(targets.labels), targets=targets,
        hard_negatives="add", max_pixels=None, max_positives=None, max_negatives=None,
        normalize_anchors=True, detach_anchors=False, global_anchors=False,
    )  # fmt: skip
    if got is None:
        assert torch.isfinite(CF.contextrast_loss(embeddings, logits, target, **kwargs).loss)
        return
    with pytest.raises(ValueError, match=rf"hard must be a bool mask .*, got {got}$"):
        CF.contextrast_loss(embeddings, logits, target, **kwargs)


def test_a_sampler_that_may_pick_correct_pixels_gives_hard_negatives_of_errors_only():
    # HardAnchorSampler picks correctly predicted pixels too; as hard negatives of their
    # predicted class they would be their own anchor's positives: the loss keeps the errors.
    from contextrast.contrast import HardAnchorSampler

    g = torch.Generator().manual_seed(11)
    features = [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, SIZES)]
    _, logits, target = make_case(seed=11, dtype=torch.float32)
    sampler = HardAnchorSampler(max_samples=64, max_views=8)
    targets = CF.layer_targets(logits, target, SIZES)
    torch.manual_seed(0)
    picked = sampler(targets.labels, targets.pred, num_classes=N, layout=targets.layout)
    wrong = (targets.pred != targets.labels) & (targets.labels != 255)
    assert (picked & ~wrong).any() and (picked & wrong).any()
    loss = ContextrastLoss(N, CHANNELS, negatives=sampler)
    torch.manual_seed(0)
    terms = loss.terms(features, logits, target)
    per_layer = torch.stack(
        [p.sum() for p in (picked & wrong).split(targets.layout.segments.counts)]
    )
    assert torch.equal(terms.hard_negatives, per_layer)
    assert not sampler.picks_errors and BaneSampler.picks_errors


def test_the_entry_refuses_targets_of_another_batch_and_fusion_of_another_shape():
    from contextrast.functional.fusion import FusionWeights

    embeddings, logits, target = make_case(seed=12)
    kwargs = dict(
        HYPER, ignore_index=255, hard=None, hard_negatives="add", max_pixels=None,
        max_positives=None, max_negatives=None, normalize_anchors=True, detach_anchors=False,
        global_anchors=False,
    )  # fmt: skip
    other = CF.layer_targets(logits[:1], target[:1], SIZES)
    with pytest.raises(ValueError, match=r"of this batch \(2 images on cpu\).*got batch 1"):
        CF.contextrast_loss(embeddings, logits, target, **kwargs, targets=other)
    d = embeddings[0].shape[1]
    wrong = FusionWeights(*(torch.zeros(2, d, d) for _ in range(7)))  # 2 modules, not 3
    with pytest.raises(ValueError, match=rf"FusionWeights of 3 modules for d = {d} \(query"):
        CF.contextrast_loss(embeddings, logits, target, **kwargs, fusion=wrong)
    with pytest.raises(ValueError, match=r"anchor_fusion='adaptive' with detach_anchors=True"):
        ContextrastLoss(N, CHANNELS, anchor_fusion="adaptive", detach_anchors=True)


def test_the_entry_and_layer_targets_name_bad_layers_sizes_and_picks():
    embeddings, logits, target = make_case(seed=13)
    kwargs = dict(
        HYPER, ignore_index=255, hard_negatives="add", max_pixels=None, max_positives=None,
        max_negatives=None, normalize_anchors=True, detach_anchors=False, global_anchors=False,
    )  # fmt: skip
    for bad in ([], embeddings[0]):
        with pytest.raises(ValueError, match=r"embeddings must be a list of one map per layer"):
            CF.contextrast_loss(bad, logits, target, hard=None, **kwargs)
    for sizes in ([(32, 48, 1)], (32, 48), [(7.9, 12)], [(0, 4)]):
        with pytest.raises(ValueError, match=r"sizes must be \(h, w\) pairs of positive ints"):
            CF.layer_targets(logits, target, sizes)
    targets = CF.layer_targets(logits, target, SIZES)
    hard = torch.zeros_like(targets.labels, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match=r"hard must be a bool mask .* on meta$"):
        CF.contextrast_loss(embeddings, logits, target, hard=hard, targets=targets, **kwargs)
    from contextrast.contrast import HardAnchorSampler

    with pytest.raises(ValueError, match=r"pred must have labels' shape \(\d+,\) \(the flat axis"):
        HardAnchorSampler()(targets.labels, targets.pred[:-5], num_classes=N, layout=targets.layout)


@pytest.mark.parametrize("mode", ["add", "only", "include"])
def test_both_pair_forms_score_any_hard_mask_alike(mode):
    """A hand-made pick may hold unlabelled or correctly predicted pixels: a correct one is
    dropped (it would be its own anchor's negative), an unlabelled one is its predicted
    class's negative (in "only", an anchor with any pick keeps its labelled picks alone);
    the dense and the sparse form agree to rounding, values and gradients."""
    embeddings, logits, target = make_case(seed=4)
    sizes = [tuple(e.shape[-2:]) for e in embeddings]
    targets = CF.layer_targets(logits, target, sizes, 255)
    g = torch.Generator().manual_seed(0)
    hard = torch.rand(targets.labels.shape, generator=g) < 0.3
    correct = targets.labels == targets.pred
    assert (hard & (targets.labels == 255)).any() and (hard & correct).any()

    def run(form, picks):
        terms = CF.contextrast_loss(
            embeddings, logits, target, **HYPER, ignore_index=255, hard=picks, targets=targets,
            hard_negatives=mode, max_pixels=None, max_positives=None, max_negatives=None,
            normalize_anchors=True, detach_anchors=False, global_anchors=False, pair_form=form,
        )  # fmt: skip
        return terms.layer_losses, torch.autograd.grad(terms.loss, embeddings)

    (dense, dense_grads), (sparse, sparse_grads) = run("dense", hard), run("sparse", hard)
    assert torch.allclose(dense, sparse, rtol=1e-10, atol=0)
    for a, b in zip(dense_grads, sparse_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)
    # the correct pixels among the picks change nothing
    errors_only = hard & ~correct
    assert torch.equal(run("dense", errors_only)[0], dense)
