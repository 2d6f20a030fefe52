import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from contextrast import functional as CF
from contextrast.functional import _distance
from tests import reference as ref

# ------------------------------------------------------------------ representative anchors


def test_anchors_hand_case():
    # Four pixels in one row: two of class 0, one of class 1, one ignored.
    emb = torch.tensor([[1.0, 0.0, 1.0, 3.0], [0.0, 1.0, 1.0, 3.0]]).view(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 1, 255]]])
    anchors, present = CF.representative_anchors(emb, labels, num_classes=3)
    assert torch.allclose(anchors, torch.tensor([[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]]))
    assert present.tolist() == [True, True, False]


def test_anchors_match_brute_force_over_batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 4, 6), generator=g)
    labels[0, 0, :3] = 255
    anchors, present = CF.representative_anchors(emb, labels, num_classes=5)
    want, want_present = ref.anchors(emb.numpy(), labels.numpy(), 5)
    assert anchors.dtype == torch.float64
    np.testing.assert_allclose(anchors.numpy(), want, atol=1e-12)
    assert present.numpy().tolist() == want_present.tolist()


def test_anchor_gradient_is_one_over_count():
    emb = torch.zeros(1, 2, 2, 2, requires_grad=True)
    labels = torch.tensor([[[0, 0], [0, 1]]])
    anchors, _ = CF.representative_anchors(emb, labels, num_classes=2)
    anchors.sum().backward()
    # Class 0 has 3 pixels, class 1 one: d(sum of anchors)/dv = 1/count in every channel.
    expected = torch.tensor([[1 / 3, 1 / 3], [1 / 3, 1.0]]).expand(1, 2, 2, 2)
    assert torch.allclose(emb.grad, expected)


@pytest.mark.parametrize(
    ("emb_shape", "label_shape", "match"),
    [((2, 3, 4), (2, 3, 4), "embeddings must have shape"), ((1, 2, 3, 4), (1, 3, 5), "labels")],
)
def test_anchors_reject_bad_shapes(emb_shape, label_shape, match):
    with pytest.raises(ValueError, match=match):
        CF.representative_anchors(torch.zeros(emb_shape), torch.zeros(label_shape).long(), 2)


def test_anchors_reject_labels_outside_classes():
    with pytest.raises(ValueError, match=r"values \[7\] outside \[0, 3\)"):
        CF.representative_anchors(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 7]]]), 3)


# ------------------------------------------------------------------ pixel-anchor loss


def test_pixel_anchor_loss_hand_case():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    # Each anchor: one positive at similarity 1, one negative at 0, τ = 1:
    # -log(e / (e + 1)) = log(1 + 1/e).
    loss = CF.pixel_anchor_loss(anchors, emb, labels, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_pixel_anchor_loss_averages_positives_then_anchors():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    loss = CF.pixel_anchor_loss(anchors, emb, labels, temperature=1.0)
    # Anchor 0: positives at s = 1 and s = 0, negative at 0.
    a0 = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    # Anchor 1: positive at 1, negatives at 0 and 0.
    a1 = -math.log(math.e / (math.e + 2))
    assert loss.item() == pytest.approx((a0 + a1) / 2, rel=1e-6)


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("with_mask", [False, True])
def test_pixel_anchor_loss_matches_loop(tau, with_mask):
    g = torch.Generator().manual_seed(1)
    anchors = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64))
    emb = torch.nn.functional.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64))
    labels = torch.randint(0, 4, (40,), generator=g)
    labels[::7] = 255
    mask = torch.rand(4, 40, generator=g) > 0.5 if with_mask else None
    loss = CF.pixel_anchor_loss(anchors, emb, labels, tau, mask)
    want = ref.pixel_anchor_loss(
        anchors.numpy(), emb.numpy(), labels.numpy(), tau, None if mask is None else mask.numpy()
    )
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_extra_negatives_count_once_more_hand_case():
    # Anchor 0 (one positive at s = 1, one negative at s = 0); the negative is also an
    # extra (hard) negative: −log(e / (e + 1 + 1)). The logits already include 1/τ.
    anchors = embeddings = torch.eye(2)  # logits a·v/τ with τ = 1: the identity
    labels = torch.tensor([0, 1])
    extra = torch.tensor([[False, True], [False, False]])
    loss = CF.pixel_anchor_loss(anchors, embeddings, labels, 1.0, extra_negative=extra)
    a0 = -math.log(math.e / (math.e + 2))
    a1 = -math.log(math.e / (math.e + 1))
    assert loss.item() == pytest.approx((a0 + a1) / 2, rel=1e-6)
    # An extra negative on the anchor's own class is never a negative.
    own = torch.tensor([[True, False], [False, False]])
    plain = CF.pixel_anchor_loss(anchors, embeddings, labels, 1.0)
    assert CF.pixel_anchor_loss(anchors, embeddings, labels, 1.0, extra_negative=own) == plain


@pytest.mark.parametrize("tau", [0.01, 1.0])
def test_positive_and_extra_masks_match_loop(tau):
    g = torch.Generator().manual_seed(2)
    anchors = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64))
    emb = torch.nn.functional.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64))
    labels = torch.randint(0, 4, (40,), generator=g)
    labels[::7] = 255
    negative = torch.rand(4, 40, generator=g) > 0.3
    positive = torch.rand(4, 40, generator=g) > 0.5
    extra = torch.rand(4, 40, generator=g) > 0.7
    loss = CF.pixel_anchor_loss(anchors, emb, labels, tau, negative, 255, positive, extra)
    want = ref.pixel_anchor_loss(
        anchors.numpy(), emb.numpy(), labels.numpy(), tau, negative.numpy(), 255,
        positive.numpy(), extra.numpy(),
    )  # fmt: skip
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_pixel_anchor_loss_is_stable_at_low_temperature():
    g = torch.Generator().manual_seed(2)
    anchors = torch.nn.functional.normalize(torch.randn(3, 16, generator=g)).requires_grad_()
    emb = torch.nn.functional.normalize(torch.randn(5000, 16, generator=g)).requires_grad_()
    labels = torch.randint(0, 3, (5000,), generator=g)
    loss = CF.pixel_anchor_loss(anchors, emb, labels, temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(emb.grad).all()
    assert loss.item() > 1.0  # random embeddings at τ = 0.01 are far from solved


def test_pixel_anchor_loss_is_zero_with_graph_when_no_anchor_qualifies():
    anchors = torch.randn(2, 4, requires_grad=True)
    emb = torch.randn(5, 4, requires_grad=True)
    # Only class 0 present: it has positives but no negatives; class 1 has no positives.
    loss = CF.pixel_anchor_loss(anchors, emb, torch.zeros(5, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(emb.grad) == 0
    all_ignore = CF.pixel_anchor_loss(anchors, emb, torch.full((5,), 255))
    assert all_ignore.item() == 0.0 and all_ignore.requires_grad


def test_pixel_anchor_loss_bfloat16_inputs():
    g = torch.Generator().manual_seed(3)
    anchors = torch.nn.functional.normalize(torch.randn(3, 16, generator=g))
    emb = torch.nn.functional.normalize(torch.randn(200, 16, generator=g))
    labels = torch.randint(0, 3, (200,), generator=g)
    full = CF.pixel_anchor_loss(anchors, emb, labels, temperature=0.01)
    half = CF.pixel_anchor_loss(anchors.bfloat16(), emb.bfloat16(), labels, temperature=0.01)
    assert torch.isfinite(half) and half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_pixel_anchor_loss_rejects_bad_input():
    anchors, emb = torch.zeros(2, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        CF.pixel_anchor_loss(anchors, torch.zeros(4, 5), torch.zeros(4).long())
    with pytest.raises(ValueError, match="labels must have shape"):
        CF.pixel_anchor_loss(anchors, emb, torch.zeros(3).long())
    with pytest.raises(ValueError, match="negative_mask"):
        CF.pixel_anchor_loss(anchors, emb, torch.zeros(4).long(), negative_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        CF.pixel_anchor_loss(anchors, emb, torch.zeros(4).long(), temperature=0)
    with pytest.raises(ValueError, match="outside"):
        CF.pixel_anchor_loss(anchors, emb, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="integer"):
        CF.pixel_anchor_loss(anchors, emb, torch.zeros(4))


# ------------------------------------------------------------------ error maps


def test_class_error_maps_hand_case():
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 0, 1]]])
    maps = CF.class_error_maps(pred, target, num_classes=2)
    assert maps.shape == (1, 2, 1, 4)
    assert maps[0, 0, 0].tolist() == [False, True, False, False]  # GT 0 predicted as 1
    assert maps[0, 1, 0].tolist() == [False, False, True, False]  # GT 1 predicted as 0


def test_class_error_maps_reject_bad_pred():
    with pytest.raises(ValueError, match="pred contains values"):
        CF.class_error_maps(torch.tensor([[[3]]]), torch.tensor([[[0]]]), 2)
    with pytest.raises(ValueError, match="same shape"):
        CF.class_error_maps(torch.zeros(1, 2, 2).long(), torch.zeros(1, 2, 3).long(), 2)
    # validate=False skips only the value checks (callers that checked already).
    maps = CF.class_error_maps(torch.tensor([[[3]]]), torch.tensor([[[0]]]), 2, validate=False)
    assert maps[0, :, 0, 0].tolist() == [True, False]
    with pytest.raises(ValueError, match="target"):
        CF.class_error_maps(torch.tensor([[[0]]]), torch.tensor([[[7]]]), 2)


# ------------------------------------------------------------------ distance transform


def test_distance_transform_hand_case():
    mask = torch.tensor(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    d = CF.distance_transform(mask)
    assert d[2, 2].item() == 2.0 and d[1, 1].item() == 1.0 and d[0, 0].item() == 0.0
    # A single False pixel in a corner: distances are plain Euclidean norms.
    corner = torch.ones(3, 4, dtype=torch.bool)
    corner[0, 0] = False
    expected = torch.tensor([[math.hypot(i, j) for j in range(4)] for i in range(3)])
    assert torch.allclose(CF.distance_transform(corner), expected)


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (5, 1, 40), (4, 31, 1), (1, 64, 64)])
@pytest.mark.parametrize("density", [0.3, 0.9, 0.995])
def test_distance_transform_matches_scipy(shape, density):
    g = torch.Generator().manual_seed(sum(shape) + int(density * 1000))
    mask = torch.rand(shape, generator=g) < density
    got = CF.distance_transform(mask)
    assert got.shape == mask.shape and got.device == mask.device
    np.testing.assert_allclose(got.numpy(), ref.edt(mask.numpy()), atol=1e-4)


def test_distance_transform_blobs_match_scipy():
    # Large regions need many column offsets: the early-exit path must stay exact.
    mask = torch.zeros(2, 60, 90, dtype=torch.bool)
    mask[0, 5:55, 10:80] = True
    mask[1, :, 30:] = True
    mask[1, 20:25, 50:52] = False
    np.testing.assert_allclose(
        CF.distance_transform(mask).numpy(), ref.edt(mask.numpy()), atol=1e-4
    )


def test_distance_transform_special_maps():
    mask = torch.zeros(3, 4, 5, dtype=torch.bool)
    mask[1] = True  # no False pixel
    mask[2, 1, 1] = True
    d = CF.distance_transform(mask)
    assert (d[0] == 0).all()
    assert torch.isinf(d[1]).all()
    assert d[2, 1, 1] == 1.0 and d[2].sum() == 1.0
    assert CF.distance_transform(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4, 4)


def test_distance_transform_uses_float64_when_float32_is_not_exact():
    mask = torch.ones(4097, 1, dtype=torch.bool)
    mask[0, 0] = False
    d = CF.distance_transform(mask)
    assert d.dtype == torch.float64 and d[4096, 0].item() == 4096.0


def test_distance_transform_rejects_non_bool():
    with pytest.raises(ValueError, match="bool"):
        CF.distance_transform(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        CF.distance_transform(torch.zeros(3, dtype=torch.bool))


# ------------------------------------------------------------------ BANE selection


def test_bane_select_hand_case():
    errors = torch.zeros(1, 1, 3, 7, dtype=torch.bool)
    errors[0, 0, 1, 1:6] = True  # a 1×5 error strip: distances 1 everywhere
    distance = torch.zeros(1, 1, 3, 7)
    distance[0, 0, 1, 1:6] = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0])
    chosen = CF.bane_select(distance, errors, 0.5)
    # ⌈0.5 · 5⌉ = 3: both 1s and one of the 2s.
    assert chosen.sum() == 3
    assert chosen[0, 0, 1, 1] and chosen[0, 0, 1, 5] and not chosen[0, 0, 1, 3]
    assert chosen[0, 0, 1, 2] ^ chosen[0, 0, 1, 4]


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.999])
def test_bane_select_is_nearest_first_per_class_over_batch(ratio):
    g = torch.Generator().manual_seed(int(ratio * 100))
    target = torch.randint(0, 4, (3, 12, 14), generator=g)
    pred = torch.randint(0, 4, (3, 12, 14), generator=g)
    errors = CF.class_error_maps(pred, target, 4)
    distance = CF.distance_transform(errors)
    chosen = CF.bane_select(distance, errors, ratio)
    assert not (chosen & ~errors).any()
    for c in range(4):
        inside = distance[:, c][errors[:, c]]
        picked = distance[:, c][chosen[:, c]]
        assert picked.numel() == ref.ceil_ratio(ratio, inside.numel())
        rest = distance[:, c][errors[:, c] & ~chosen[:, c]]
        if picked.numel() and rest.numel():
            assert picked.max() <= rest.min()


def test_bane_select_ratio_edges_and_float_artefacts():
    errors = torch.zeros(1, 2, 2, 10, dtype=torch.bool)
    errors[0, 0, 0] = True  # class 0: row 0, 10 pixels
    errors[0, 1, 1, :3] = True  # class 1: 3 pixels of row 1 (eq. 6's maps are disjoint)
    distance = torch.arange(40.0).view(1, 2, 2, 10)
    assert not CF.bane_select(distance, errors, 0.0).any()
    assert torch.equal(CF.bane_select(distance, errors, 1.0), errors)
    # 0.7 · 10 is 7.000000000000001 in floating point; the count must be 7, not 8.
    assert CF.bane_select(distance, errors, 0.7)[0, 0].sum() == 7
    assert CF.bane_select(distance, errors, 0.7)[0, 1].sum() == 3  # ⌈2.1⌉


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_bane_select_gives_each_class_its_quota_even_on_overlapping_maps(ratio):
    # Issue 20: a collapsed form counted a pixel in two classes' maps for one of them only
    # (123 of 240 at K = 0.5). The reference selects class by class: every class gets
    # ⌈K · count⌉ of its own pixels, nearest first, whatever the other maps hold.
    g = torch.Generator().manual_seed(0)
    errors = torch.rand(2, 3, 8, 10, generator=g) < 0.5  # independent maps: they overlap
    distance = torch.rand(2, 3, 8, 10, generator=g)
    assert (errors.sum(1) > 1).any()
    for chosen in (CF.bane_select(distance, errors, ratio), CF.semi_hard_select(errors, ratio)):
        assert not (chosen & ~errors).any()
        for c in range(3):
            assert chosen[:, c].sum() == ref.ceil_ratio(ratio, int(errors[:, c].sum()))
    chosen = CF.bane_select(distance, errors, ratio)
    for c in range(3):
        picked, rest = distance[:, c][chosen[:, c]], distance[:, c][errors[:, c] & ~chosen[:, c]]
        if len(picked) and len(rest):
            assert picked.max() <= rest.min()


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), "0.5"])
def test_bane_select_rejects_ratio(ratio):
    errors = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="ratio"):
        CF.bane_select(torch.zeros(1, 1, 2, 2), errors, ratio)


def test_hard_negative_mask_rows_are_confused_classes():
    hard = torch.tensor([True, True, False, True])
    pred = torch.tensor([1, 2, 1, 1])
    mask = CF.batched.hard_negative_mask(hard, pred, num_classes=3, fallback=False)
    assert mask.tolist() == [
        [False, False, False, False],
        [True, False, False, True],
        [False, True, False, False],
    ]
    with_fallback = CF.batched.hard_negative_mask(hard, pred, num_classes=3)
    assert with_fallback[0].all() and torch.equal(with_fallback[1:], mask[1:])


def test_scipy_reference_agrees_with_hand_values():
    # Guards the reference itself: scipy's convention is distance to the nearest zero.
    m = np.array([[0, 1, 1, 1]], dtype=bool)
    assert ndimage.distance_transform_edt(m).tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("cutoff", [0.5, 1, 2.5, 7])
def test_distance_transform_cutoff_is_exact_below_and_inf_above(cutoff):
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(3, 30, 40, generator=g) < 0.97
    full = CF.distance_transform(mask)
    cut = CF.distance_transform(mask, max_distance=cutoff)
    near = full <= cutoff
    assert torch.equal(cut[near], full[near])
    assert torch.isinf(cut[~near]).all()


def test_layer_sums_hand_case_and_bad_shapes():
    # v = L c with L = [[3, 0], [0, 4]]: c = (1, 1) gives v = (3, 4), norm 5; c = 0 gives v = 0.
    coords = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # (K=2, M=2): one column per pixel
    lift = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    one_hot = torch.tensor([[1.0, 1.0]])  # both pixels in class 0
    inverse, sums = CF.batched.layer_sums(coords, lift, one_hot)
    assert inverse[0].item() == pytest.approx(1 / 5)
    assert inverse[1].item() == pytest.approx(1e12)  # v = 0: F.normalize's eps
    assert sums[0].tolist() == pytest.approx([3 / 5, 4 / 5])  # v/‖v‖ of pixel 0, plus 0
    assert CF.batched.layer_sums(coords, None, one_hot)[0][0].item() == pytest.approx(2**-0.5)
    with pytest.raises(ValueError, match="lift has 3 columns but coords have K=2"):
        CF.batched.layer_sums(coords, torch.ones(2, 3), one_hot)
    with pytest.raises(ValueError, match=r"coords must have shape \(K, M\)"):
        CF.batched.layer_sums(torch.ones(1, 2, 2), lift, one_hot)
    with pytest.raises(ValueError, match=r"one_hot must have shape \(N, M\) with M=2"):
        CF.batched.layer_sums(coords, lift, one_hot[:, :1])


def test_fuse_anchors_by_hand():
    low = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # (N=2, D=2)
    top = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # class 1 vanished at the last layer
    present = torch.tensor([True, False])
    fused_low, fused_top = CF.batched.fuse_anchors([low, top], present, w_high=0.7, normalize=False)
    assert torch.allclose(fused_low, torch.tensor([[0.9, 0.7], [0.0, 2.0]]))
    assert torch.equal(fused_top, top)
    unit_low, unit_top = CF.batched.fuse_anchors([low, top], present, w_high=0.7)
    norm = (0.9**2 + 0.7**2) ** 0.5
    assert torch.allclose(unit_low, torch.tensor([[0.9 / norm, 0.7 / norm], [0.0, 1.0]]))
    assert torch.allclose(unit_top, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # zero stays zero


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapsed_error_maps_give_the_per_class_distances_and_selection(seed):
    """error_labels / error_distance / bane_select_labels (one map per image, what the loss
    uses) against the N-map forms of eq. 6, 7 and the selection."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 5, (2, 1, 4, 6), generator=g).float()
    target = F.interpolate(coarse, size=(13, 19), mode="nearest")[:, 0].long()
    target[0, :3, :4] = 255
    pred = torch.randint(0, 5, (2, 13, 19), generator=g)
    pred[1] = target[1].clamp(max=4)  # an image without errors except the noise below
    pred[1, 5, 5] = (target[1, 5, 5] + 1) % 5
    maps = CF.class_error_maps(pred, target, 5)  # (B, N, H, W)
    labels = CF.batched.error_labels(pred, target, 5)  # (B, H, W)
    for n in range(5):
        assert torch.equal(labels == n, maps[:, n])
    per_class = CF.distance_transform(maps)
    own = (per_class * maps).sum(1)
    assert torch.allclose(CF.batched.error_distance(labels, 5), own)
    for ratio in (0.3, 0.5, 0.8):
        chosen = CF.batched.bane_select_labels(
            CF.batched.error_distance(labels, 5), labels, 5, ratio
        )
        assert torch.equal(chosen, CF.bane_select(per_class, maps, ratio).any(1))


def test_an_error_region_that_fills_its_image_is_infinitely_far():
    labels = torch.full((1, 3, 4), 2)
    distance = CF.batched.error_distance(labels, 3)
    assert torch.isinf(distance).all()
    assert CF.batched.bane_select_labels(distance, labels, 3, 0.5).sum() == 6  # ⌈0.5 · 12⌉


@pytest.mark.parametrize("density", [0.3, 0.9, 0.995])
def test_dense_and_sparse_transforms_agree(density, monkeypatch):
    """Small maps take the dense form, large ones the sparse form: both exact."""
    g = torch.Generator().manual_seed(int(density * 1000))
    mask = torch.rand(3, 2, 29, 41, generator=g) < density
    mask[0, 1] = True  # a map without a False pixel
    dense = CF.distance_transform(mask)
    cut = CF.distance_transform(mask, max_distance=3.5)
    monkeypatch.setattr(_distance, "DENSE_EDT_LIMIT", 0)
    sparse_calls = []
    envelope = _distance._column_envelope
    monkeypatch.setattr(
        _distance, "_column_envelope", lambda *a: sparse_calls.append(1) or envelope(*a)
    )
    assert torch.equal(dense, CF.distance_transform(mask))
    assert sparse_calls  # the sparse form ran (a patch of the wrong module would not do it)
    assert torch.equal(cut, CF.distance_transform(mask, max_distance=3.5))
    finite = ~mask.flatten(-2).all(-1)  # scipy has no convention for maps without a zero
    np.testing.assert_allclose(dense[finite].numpy(), ref.edt(mask[finite].numpy()), atol=1e-4)
    assert torch.isinf(dense[0, 1]).all()


def test_dense_transform_splits_its_work_into_chunks(monkeypatch):
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(6, 20, 30, generator=g) < 0.9
    whole = CF.distance_transform(mask)
    monkeypatch.setattr(_distance, "DENSE_EDT_LIMIT", 20 * 20 * 30 * 2)  # two maps per chunk
    assert torch.equal(CF.distance_transform(mask), whole)


# ------------------------------------------------------------------ written-out gradients


def _blocks_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = (7, 5)
    labels = torch.randint(0, 3, (sum(counts),), generator=g)
    return g, counts, labels, CF.batched.segments(counts, torch.device("cpu"))


@pytest.mark.parametrize("lifted", [True, False])
def test_layer_sums_gradients_match_finite_differences(lifted):
    g, _counts, labels, _ = _blocks_case()
    coords = torch.randn(4, 12, generator=g, dtype=torch.float64, requires_grad=True)
    lift = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    one_hot = CF.batched.class_one_hot(labels, 3, torch.float64)
    inputs = (coords, lift) if lifted else (coords,)

    def run(*args):
        inverse, sums = CF.batched.layer_sums(args[0], args[1] if lifted else None, one_hot)
        return inverse, sums

    assert torch.autograd.gradcheck(run, inputs)
    # And the values: 1/‖v‖ and the class sums of v/‖v‖ formed explicitly.
    v = (lift @ coords if lifted else coords).detach()
    inverse, sums = run(*inputs)
    torch.testing.assert_close(inverse, 1 / v.norm(dim=0))
    torch.testing.assert_close(sums, one_hot @ (v / v.norm(dim=0)).t())


def test_layer_similarity_gradients_match_finite_differences():
    # Layer 0 factored (v = lift @ c), layers 1 and 2 formed and scored as one group.
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(3, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    coords = [torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)]  # fmt: skip
    lift = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    inverse = torch.rand(15, generator=g, dtype=torch.float64).add(0.5).requires_grad_()

    def run(anchors, inverse, c0, c1, lift):
        groups = [CF.batched.LayerGroup((7,), c0, lift), CF.batched.LayerGroup((5, 3), c1, None)]
        return CF.batched.layer_similarity(anchors, groups, inverse, 0.3)

    inputs = (anchors, inverse, *coords, lift)
    assert torch.autograd.gradcheck(run, inputs)
    want = torch.cat(
        [
            anchors[0] @ lift @ coords[0],
            anchors[1] @ coords[1][:, :5],
            anchors[2] @ coords[1][:, 5:],
        ],
        1,
    )
    torch.testing.assert_close(run(*inputs), want * inverse / 0.3)


def test_group_one_hot_puts_each_layer_in_its_own_rows():
    one_hot = CF.batched.class_one_hot(torch.tensor([0, 1, 255, 1, 0]), 2, torch.float32)  # (2, 5)
    rows = CF.batched.group_one_hot(one_hot, (3, 2))  # layer 0: columns 0-2, layer 1: columns 3-4
    want = [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]]
    assert rows.tolist() == want
    assert CF.batched.group_one_hot(one_hot, (5,)) is one_hot


def test_blockwise_info_nce_matches_autograd_of_the_explicit_form():
    g, _counts, labels, blocks = _blocks_case(2)
    logits = torch.randn(3, 12, generator=g, dtype=torch.float64, requires_grad=True)
    positive = labels == torch.arange(3).unsqueeze(1)
    negative = ~positive & (torch.rand(3, 12, generator=g) < 0.8)
    extra = ~positive & (torch.rand(3, 12, generator=g) < 0.3)
    negative[2, 7:] = False  # anchor 2 has no ordinary negative in block 1 ...
    extra[2, 7:] = False  # ... and no extra one: it drops out of that block
    losses = CF.batched.info_nce_from_logits(logits, positive, negative, extra, blocks)
    assert torch.autograd.gradcheck(
        lambda x: CF.batched.info_nce_from_logits(x, positive, negative, extra, blocks), (logits,)
    )
    # The explicit form, block by block: log-sum-exp over the denominator with the extra
    # negatives counted once more, mean over positives, mean over anchors that have both.
    for s, (lo, hi) in enumerate(((0, 7), (7, 12))):
        x, pos = logits[:, lo:hi], positive[:, lo:hi]
        den = torch.cat([x.masked_fill(~negative[:, lo:hi], -math.inf),
                         x.masked_fill(~extra[:, lo:hi], -math.inf)], 1)  # fmt: skip
        terms = []
        for a in range(3):
            if pos[a].any() and torch.isfinite(den[a]).any():
                lse = torch.logsumexp(den[a], 0)
                terms.append(F.softplus(lse - x[a][pos[a]]).mean())
        torch.testing.assert_close(losses[s], torch.stack(terms).mean())
