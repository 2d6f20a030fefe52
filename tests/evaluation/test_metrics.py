import math

import numpy as np
import pytest
import torch

from contextrast import metrics


def test_confusion_matrix_hand_case():
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])
    cm = metrics.confusion_matrix(pred, target, num_classes=3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows = GT


def test_confusion_matrix_matches_loop_and_accumulates():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 9, 11), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 5, (2, 9, 11), generator=g)
    cm = metrics.confusion_matrix(pred, target, 5)
    want = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            want[t, p] += 1
    assert cm.numpy().tolist() == want.tolist()
    halves = metrics.confusion_matrix(pred[:1], target[:1], 5) + metrics.confusion_matrix(
        pred[1:], target[1:], 5
    )
    assert torch.equal(halves, cm)


def test_confusion_matrix_rejects_bad_values():
    with pytest.raises(ValueError, match=r"target contains values \[9\]"):
        metrics.confusion_matrix(torch.tensor([0]), torch.tensor([9]), 3)
    with pytest.raises(ValueError, match="pred must hold integer class ids"):
        metrics.confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)


def test_mean_iou_hand_case_with_absent_class():
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou, miou = metrics.mean_iou(cm)
    # class 0: 1 / (2 + 1 - 1) = 0.5; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: absent.
    assert iou.dtype == torch.float64
    assert iou[0].item() == 0.5 and iou[1].item() == pytest.approx(2 / 3)
    assert math.isnan(iou[2].item())
    assert miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics.pixel_accuracy(cm) == pytest.approx(3 / 4)
    # A class only predicted (never in GT) has IoU 0, not NaN.
    assert metrics.mean_iou(torch.tensor([[1, 1], [0, 0]])).iou.tolist() == [0.5, 0.0]


def brute_band(target: np.ndarray, width: float) -> np.ndarray:
    h, w = target.shape
    band = np.zeros_like(target, dtype=bool)
    for y in range(h):
        for x in range(w):
            for yy in range(h):
                for xx in range(w):
                    if target[yy, xx] != target[y, x] and math.hypot(y - yy, x - xx) <= width:
                        band[y, x] = True
    return band


def test_boundary_band_hand_case():
    target = torch.tensor([[0, 0, 0, 0, 1, 1]])
    assert metrics.boundary_band(target, 1).tolist() == [[False, False, False, True, True, False]]
    assert metrics.boundary_band(target, 2).tolist() == [[False, False, True, True, True, True]]
    assert not metrics.boundary_band(torch.zeros(3, 3, dtype=torch.long), 5).any()


@pytest.mark.parametrize("width", [1, 1.5, 3])
def test_boundary_band_matches_brute_force(width):
    g = torch.Generator().manual_seed(int(width * 10))
    target = torch.randint(0, 3, (2, 3), generator=g).repeat_interleave(4, 0)
    target = target.repeat_interleave(3, 1)  # 8×9 blocks
    target[0, 0] = 255
    band = metrics.boundary_band(target.unsqueeze(0), width)[0]
    assert band.numpy().tolist() == brute_band(target.numpy(), width).tolist()


def test_boundary_confusion_matrix_counts_only_the_band():
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    pred = torch.tensor([[1, 0, 0, 1, 1, 1, 1, 0]])
    cm = metrics.boundary_confusion_matrix(pred, target, 2, width=1)
    assert cm.tolist() == [[0, 1], [0, 1]]  # band = pixels 3 and 4 only


def test_feature_metrics_hand_case():
    s = 1 / math.sqrt(2)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [9, 9]])
    labels = torch.tensor([0, 0, 1, 1, 2, 255])
    out = metrics.feature_metrics(emb, labels, ks=(1, 2, 5))
    # Classes 0 and 1: ordered pairs (incl. j = k) 0, √2, √2, 0 -> √2 / 2; class 2: 0.
    assert out["A"] == pytest.approx((2 * math.sqrt(2) / 2) / 3)
    d01 = 2.0
    d02 = math.dist((s, s), (1, 0))
    d12 = math.dist((-s, -s), (1, 0))
    assert out["U"] == pytest.approx((d01 + d02 + d12) / 3)
    assert out["U_1"] == pytest.approx((min(d01, d02) + min(d01, d12) + min(d02, d12)) / 3)
    assert out["U_2"] == pytest.approx(out["U"])
    assert out["U_5"] == pytest.approx(out["U"])  # k above C − 1 uses all neighbours
    assert set(out) == {"A", "U", "U_1", "U_2", "U_5"}


def test_feature_metrics_single_class_and_bad_input():
    out = metrics.feature_metrics(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    assert out["A"] > 0 and math.isnan(out["U"]) and math.isnan(out["U_3"])
    with pytest.raises(ValueError, match="embeddings must be"):
        metrics.feature_metrics(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one labelled"):
        metrics.feature_metrics(torch.randn(2, 3), torch.full((2,), 255))


def test_frequency_groups_split_the_classes_in_thirds_by_training_pixels():
    # 10 classes: thirds of 4, 3, 3; class 7 and 8 tie (the lower id first).
    pixels = [50, 900, 10, 400, 0, 70, 300, 5, 5, 1000]
    groups = metrics.frequency_groups(pixels)
    # order: 9 (1000), 1 (900), 3 (400), 6 (300) | 5 (70), 0 (50), 2 (10) | 7, 8 (5), 4 (0)
    assert groups == {"head": [1, 3, 6, 9], "middle": [0, 2, 5], "tail": [4, 7, 8]}
    assert metrics.frequency_groups([3, 2]) == {"head": [0], "middle": [1], "tail": []}
    assert metrics.frequency_groups(torch.tensor([1, 3, 2]))["head"] == [1]
    for bad in (
        [1, -1, 2],
        [1.5, 2, 3],
        [True, 1, 2],
        None,
        {0: 5, 1: 7, 2: 9},
        b"abc",
        iter([1, 2]),
    ):
        with pytest.raises(ValueError, match=r"pixels must be ints >= 0, one per class"):
            metrics.frequency_groups(bad)


def test_frequency_miou_means_each_third_over_its_occurring_classes():
    pixels = [6, 5, 4, 3, 2, 1]  # head 0, 1; middle 2, 3; tail 4, 5
    iou = [0.9, 0.7, 0.5, math.nan, 0.2, 0.0]
    got = metrics.frequency_miou(iou, pixels)
    assert got == pytest.approx({"head": 0.8, "middle": 0.5, "tail": 0.1})
    assert math.isnan(metrics.frequency_miou([math.nan, 1.0, 1.0], [9, 1, 1])["head"])
    with pytest.raises(ValueError, match="iou has 2 classes but pixels has 3"):
        metrics.frequency_miou([0.1, 0.2], [1, 2, 3])


def test_connected_components_hand_case():
    target = torch.tensor(
        [
            [1, 1, 0, 2],
            [0, 1, 255, 2],
            [1, 0, 0, 1],
        ]
    )
    # Region ids are the flat index of each region's first pixel; under 8-connectivity
    # only, the 1 at (2, 0) joins the 1s above it, and the 0 at (1, 0) the 0s below it
    # (diagonal neighbours); the 0 at (0, 2) touches no other 0.
    assert metrics.connected_components(target).tolist() == [
        [0, 0, 2, 3],
        [4, 0, -1, 3],
        [0, 4, 4, 11],
    ]
    assert metrics.connected_components(target, connectivity=4).tolist() == [
        [0, 0, 2, 3],
        [4, 0, -1, 3],
        [8, 9, 9, 11],
    ]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_scipy(connectivity):
    ndimage = pytest.importorskip("scipy.ndimage")
    generator = torch.Generator().manual_seed(connectivity)
    structure = np.ones((3, 3)) if connectivity == 8 else None
    for _ in range(20):
        h, w = (int(v) for v in torch.randint(1, 24, (2,), generator=generator))
        target = torch.randint(0, 3, (2, h, w), generator=generator)
        target[torch.rand(2, h, w, generator=generator) < 0.15] = 255
        regions = metrics.connected_components(target, connectivity=connectivity).numpy()
        for image, found in zip(target.numpy(), regions):
            expected, offset = np.full((h, w), -1), 0
            for value in set(np.unique(image).tolist()) - {255}:
                labels, count = ndimage.label(image == value, structure=structure)
                expected[labels > 0] = labels[labels > 0] + offset
                offset += count
            assert ((found == -1) == (expected == -1)).all()
            labelled = expected >= 0
            pairs = set(zip(found[labelled].tolist(), expected[labelled].tolist()))
            assert len(pairs) == len(set(expected[labelled].tolist()))  # one id per region
            assert len(pairs) == len(set(found[labelled].tolist()))
            for region in set(found[labelled].tolist()):  # its first pixel's flat index
                assert np.flatnonzero(found.reshape(-1) == region).min() == region


def test_connected_components_of_long_regions_and_bad_input():
    snake = torch.zeros(64, 64, dtype=torch.long)  # one row-by-row zigzag of 1s
    snake[::2] = 1
    snake[1::4, -1] = 1
    snake[3::4, 0] = 1
    regions = metrics.connected_components(snake, connectivity=4)
    assert regions[snake == 1].unique().tolist() == [0]
    assert (metrics.connected_components(torch.full((2, 3), 255)) == -1).all()
    with pytest.raises(ValueError, match=r"target must be an integer tensor of shape"):
        metrics.connected_components(torch.zeros(4, 4))
    for bad in (6, 8.0, True):
        with pytest.raises(ValueError, match=r"connectivity must be 4 or 8, got "):
            metrics.connected_components(snake, connectivity=bad)
    # any strides, an empty map, a small dtype whose values the ignore index cannot wrap onto
    target = torch.tensor([[0, 0, 1], [1, 255, 1], [0, 1, 1]])
    transposed = metrics.connected_components(target.T)
    assert torch.equal(transposed, metrics.connected_components(target.T.contiguous()))
    assert metrics.connected_components(torch.zeros(1, 0, 5, dtype=torch.long)).shape == (1, 0, 5)
    assert metrics.object_size_buckets(torch.zeros(2, 3, 0, dtype=torch.long)).shape == (2, 3, 0)
    signed = torch.tensor([[-1, -1, 5]], dtype=torch.int8)  # -1 is a class, not 255
    assert metrics.connected_components(signed).tolist() == [[0, 0, 2]]


def test_object_size_buckets_by_area():
    # sizes (1, 2, 3): tiny <= 1 px, small <= 4, medium <= 9, large > 9
    target = torch.tensor(
        [
            [0, 0, 0, 0, 0, 1, 1, 2],
            [0, 0, 0, 0, 0, 255, 3, 3],
        ]
    )  # the 0s: 10 px; the 1s and the 3s: 2 px each; the 2: 1 px
    buckets = metrics.object_size_buckets(target, (1, 2, 3))
    assert buckets.tolist() == [
        [3, 3, 3, 3, 3, 1, 1, 0],
        [3, 3, 3, 3, 3, -1, 1, 1],
    ]
    # per image: the same 10 px split over two images is two medium objects
    halves = target[:, :5].reshape(2, 1, 5)
    assert metrics.object_size_buckets(halves, (1, 2, 3)).unique().tolist() == [2]
    for bad in ((3, 1, 2), (1.0, 2, 3), (-1, 2, 3), (1, 2), ()):
        with pytest.raises(ValueError, match=r"sizes must be three|object_sizes must be three"):
            metrics.object_size_buckets(target, bad)
