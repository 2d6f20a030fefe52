import math

import pytest
import torch
import torch.nn.functional as F

from contextrast import functional as CF
from contextrast.contrast import (
    BalancedRandomSampler,
    ClassQueue,
    ContextrastLoss,
    HardAnchorSampler,
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
    SemiHardSampler,
)
from tests import reference as ref

N = 3


def inputs(channels=(4, 6), sizes=((8, 8), (4, 4)), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(batch, c, *s, generator=g, requires_grad=True) for c, s in zip(channels, sizes)
    ]
    target = torch.randint(0, N, (batch, 16, 16), generator=g)
    logits = torch.randn(batch, N, 8, 8, generator=g)
    return features, logits, target


# ------------------------------------------------------------------ supervised contrast


def test_supcon_hand_case():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # Anchors 0 and 1: one positive at s = 1, one negative at 0; anchor 2 has no positive.
    loss = CF.supervised_contrastive_loss(x, y, temperature=1.0, base_temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("cross", [False, True])
def test_supcon_matches_loop(cross):
    g = torch.Generator().manual_seed(5)
    x = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 3, (12,), generator=g)
    c = F.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1) if cross else None
    cy = torch.randint(0, 3, (9,), generator=g) if cross else None
    got = CF.supervised_contrastive_loss(x, y, 0.1, 0.07, c, cy)
    want = ref.supcon(
        x.numpy(),
        y.numpy(),
        0.1,
        0.07,
        None if c is None else c.numpy(),
        None if cy is None else cy.numpy(),
    )
    assert got.item() == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------------ samplers


def test_hard_anchor_sampler_half_hard_half_easy():
    torch.manual_seed(0)
    labels = torch.zeros(1, 200, dtype=torch.long)
    labels[0, 150:] = 1  # class 1 has 50 pixels: not more than max_views, not sampled
    pred = torch.zeros(1, 200, dtype=torch.long)
    pred[0, :100] = 2  # class 0: 100 hard pixels (0–99), 50 easy (100–149)
    picked = HardAnchorSampler(max_samples=1024, max_views=100)(labels, pred)
    assert picked.shape == labels.shape and int(picked.sum()) == 100
    chosen = picked[0].nonzero().squeeze(1)
    assert int((chosen < 100).sum()) == 50 and int(((chosen >= 100) & (chosen < 150)).sum()) == 50
    # Few hard pixels: the easy ones fill up.
    pred[0, 10:100] = 0  # only 10 hard left
    picked = HardAnchorSampler(max_samples=1024, max_views=100)(labels, pred)[0]
    assert int(picked[:10].sum()) == 10 and int(picked.sum()) == 100


def test_balanced_random_sampler_equal_views():
    labels = torch.full((2, 40), 255)
    labels[0, :30] = 0
    labels[0, 30:38] = 1
    labels[1, :4] = 0  # fewer than min_pixels
    picked = BalancedRandomSampler(min_pixels=5)(labels)
    assert not picked[1].any()  # image 1's only class has fewer than min_pixels
    # The smallest qualifying pair has 8 pixels: 8 views of each class of image 0.
    assert int((picked[0] & (labels[0] == 0)).sum()) == 8
    assert int((picked[0] & (labels[0] == 1)).sum()) == 8 and int(picked.sum()) == 16


def test_semi_hard_selects_the_bane_count_at_random():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 2:8, 2:8] = 1
    pred = torch.zeros_like(target)  # every class-1 pixel is an error
    picked = SemiHardSampler(ratio=0.5)(target, pred, num_classes=2)
    assert int(picked.sum()) == 18 and not (picked & (target == 0)).any()
    bane = ContextrastLoss(2, [4], layer_weights=[1.0], negatives="semi_hard")
    assert isinstance(bane.sampler, SemiHardSampler)
    with pytest.raises(
        ValueError, match=r"unknown negatives 'random'; choose from \['bane', 'semi_hard'\]"
    ):
        ContextrastLoss(2, [4], layer_weights=[1.0], negatives="random")


# ------------------------------------------------------------------ memory queues


def test_class_queue_pointer_advances_by_what_was_pushed():
    queue = ClassQueue(num_classes=2, size=3, dim=1)
    queue.push(torch.tensor([[1.0], [2.0]]), torch.tensor([1, 1]))
    assert queue.pointer.tolist() == [0, 2] and queue.count.tolist() == [0, 2]
    queue.push(torch.tensor([[3.0], [4.0], [9.0]]), torch.tensor([1, 1, 0]))
    assert queue.pointer.tolist() == [1, 1] and queue.count.tolist() == [1, 3]
    assert queue.keys[1].flatten().tolist() == [4.0, 2.0, 3.0]  # 4 overwrote the oldest
    keys, labels = queue.contents()
    assert labels.tolist() == [0, 1, 1, 1] and keys.flatten().tolist() == [9.0, 4.0, 2.0, 3.0]
    queue.push(torch.arange(5.0).view(5, 1), torch.zeros(5, dtype=torch.long))
    # Pointer at 1: the newest three (2, 3, 4) fill slots 1, 2, 0.
    assert queue.keys[0].flatten().tolist() == [4.0, 2.0, 3.0]


def test_pixel_contrast_memory_fills_its_queues():
    torch.manual_seed(0)
    features, logits, target = inputs(sizes=((16, 16), (8, 8)))
    loss = PixelContrastMemory(
        PixelContrastLoss(N, [4, 6], embed_dim=8, max_views=10), queue_size=50, pixels_per_class=4
    )
    first = loss(features, logits, target)
    segment_counts = loss.segment_queue.count.tolist()
    present = [sum(int((resize(target, 16)[b] == c).any()) for b in range(2)) for c in range(N)]
    assert segment_counts == present
    assert loss.pixel_queue.count.tolist() == [4 * n for n in present]
    second = loss(features, logits, target)  # now also contrasts against the memory
    assert torch.isfinite(first) and torch.isfinite(second) and second.item() != first.item()
    second.backward()
    assert loss.loss.head.net[0].weight.grad.abs().sum() > 0


def resize(target, size):
    from contextrast.functional import resize_labels

    return resize_labels(target, (size, size))


def _gather_worker(rank, world, path, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    queue = ClassQueue(num_classes=2, size=8, dim=2)
    keys = torch.full((rank + 1, 2), float(rank + 1))  # rank 0 pushes 1 key, rank 1 pushes 2
    queue.push(keys, torch.full((rank + 1,), rank))
    torch.save({"keys": queue.keys, "count": queue.count}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_queue_gathers_over_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, tmp_path / "store", tmp_path / "q"), nprocs=2)
    states = [torch.load(f"{tmp_path / 'q'}.{r}") for r in range(2)]
    for state in states:
        assert state["count"].tolist() == [1, 2]
        assert (
            state["keys"][0, 0].tolist() == [1.0, 1.0]
            and state["keys"][1, :2].flatten().tolist() == [2.0] * 4
        )
    assert torch.equal(states[0]["keys"], states[1]["keys"])


# ------------------------------------------------------------------ losses


def test_pixel_contrast_value_is_supcon_of_its_samples():
    features, logits, target = inputs(sizes=((16, 16), (8, 8)))
    loss = PixelContrastLoss(N, [4, 6], embed_dim=8, max_views=10, loss_weight=0.5)
    torch.manual_seed(3)
    value = loss(features, logits, target)
    torch.manual_seed(3)
    embeddings, labels, pred = loss.embed(features, logits, target)
    picked = loss.sampler(labels, pred)  # (B, P)
    x, y = embeddings.transpose(1, 2)[picked], labels[picked]
    want = ref.supcon(x.detach().double().numpy(), y.numpy(), 0.1, 0.07)
    assert value.item() == pytest.approx(0.5 * want, rel=1e-5)
    value.backward()
    assert loss.head.net[0].weight.grad.abs().sum() > 0 and features[1].grad is not None


def test_multi_scale_cross_scale_weights_and_cross_term():
    features, logits, target = inputs(sizes=((16, 16), (8, 8)))
    plain = MultiScaleCrossScaleLoss(
        N, [4, 6], embed_dim=8, scale_weights=(1.0, 0.0), cross_scale=False, loss_weight=1.0
    )
    torch.manual_seed(1)
    value = plain(features, logits, target)
    torch.manual_seed(1)
    emb = plain.heads[0](features[0]).flatten(2)
    labels = resize(target, 16).flatten(1)
    picked = plain.sampler(labels)
    x, y = emb.transpose(1, 2)[picked], labels[picked]
    assert value.item() == pytest.approx(
        ref.supcon(x.detach().double().numpy(), y.numpy(), 0.1, 0.1), rel=1e-5
    )
    full = MultiScaleCrossScaleLoss(N, [4, 6], embed_dim=8, scale_weights=(1.0, 0.7))
    total = full(features, logits, target)
    total.backward()
    assert all(h.net[0].weight.grad.abs().sum() > 0 for h in full.heads)
    with pytest.raises(ValueError, match="scale_weights has 4 entries for 2 scales"):
        MultiScaleCrossScaleLoss(N, [4, 6])
    deeplab = MultiScaleCrossScaleLoss(
        N, [4, 6, 8], feature_indices=(0, 2), scale_weights=(1.0, 0.7)
    )
    assert [h.net[0].in_channels for h in deeplab.heads] == [4, 8]


def test_region_contrast_centres_are_predicted_region_means():
    features, logits, target = inputs(sizes=((8, 8), (4, 4)))
    loss = RegionContrastLoss(N, [4, 6], embed_dim=8, queue_size=10)
    value = loss(features, logits, target)
    with torch.no_grad():
        x = torch.cat([features[0], F.interpolate(features[1], size=(8, 8), mode="bilinear")], 1)
        emb = loss.head(x).flatten(2)
        pred = logits.argmax(1).flatten(1)
    keys, labels = loss.queue.contents()
    expected = []
    for c in range(N):
        for b in range(2):
            members = pred[b] == c
            if members.any():
                expected.append((c, F.normalize(emb[b][:, members].mean(1), dim=0)))
    assert labels.tolist() == [c for c, _ in expected]
    assert torch.allclose(keys, torch.stack([v for _, v in expected]), atol=1e-6)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert loss.head.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: PixelContrastLoss(N, [4, 6], embed_dim=8, max_views=4),
        lambda: PixelContrastMemory(PixelContrastLoss(N, [4, 6], embed_dim=8, max_views=4), 20),
        lambda: MultiScaleCrossScaleLoss(N, [4, 6], embed_dim=8, scale_weights=(1.0, 0.7)),
        lambda: RegionContrastLoss(N, [4, 6], embed_dim=8),
    ],
    ids=["pixel", "pixel_memory", "ms_cs", "region"],
)
def test_no_nan_with_absent_classes_all_ignore_and_bf16(make):
    loss = make()
    features, logits, target = inputs()
    target[:] = 0  # one class only, in the labels and in the predictions: no negatives
    logits[:, 0] += 100.0
    assert loss(features, logits, target).item() == 0.0
    ignored = loss(features, logits, torch.full_like(target, 255))
    assert ignored.item() == 0.0 and ignored.requires_grad
    features, logits, target = inputs(seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(features, logits, target)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(f.grad).all() for f in features)


def test_pixel_contrast_memory_value_by_brute_force(monkeypatch):
    loss = PixelContrastMemory(
        PixelContrastLoss(N, [4, 6], embed_dim=2, temperature=0.5, base_temperature=0.25),
        queue_size=4,
    )
    x = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, -0.3]]), dim=1)
    y = torch.tensor([0, 1, 0])
    pixel = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    segment = F.normalize(torch.tensor([[0.6, 0.8], [-1.0, 0.1]]), dim=1)
    loss.pixel_queue.push(pixel, torch.tensor([0, 1]), gather=False)
    loss.segment_queue.push(segment, torch.tensor([1, 2]), gather=False)
    # Fixed anchors (x, y) for whatever the sampler picks: the loss arithmetic alone.
    from contextrast.contrast import peers

    monkeypatch.setattr(loss.loss, "sampler", lambda labels, pred: labels >= 0)
    monkeypatch.setattr(peers, "_gather", lambda embeddings, labels, picked: (x, y))
    features, logits, target = inputs(sizes=((8, 8), (4, 4)))
    value = loss(features, logits, target)
    queue = torch.cat([pixel, segment]).numpy()
    want = 0.1 * ref.supcon(
        x.numpy(), y.tolist(), 0.5, 0.25, queue=queue, queue_labels=[0, 1, 1, 2]
    )
    assert value.item() == pytest.approx(want, rel=1e-5)


def test_region_contrast_value_by_brute_force(monkeypatch):
    loss = RegionContrastLoss(N, [4, 6], embed_dim=2, temperature=0.2, queue_size=4)
    # One image, 2 × 2 pixels: two predicted as class 0, one as 1, one ignored by the target.
    embeddings = torch.tensor([[[1.0, 0.5], [0.0, 2.0]], [[0.0, 0.5], [1.0, 1.0]]])[None]
    monkeypatch.setattr(loss, "project", lambda features, target: embeddings)
    logits = torch.zeros(1, N, 2, 2)
    logits[0, 0, 0, :] = 1.0  # top row → class 0
    logits[0, 1, 1, 0] = 1.0  # bottom left → class 1
    logits[0, 2, 1, 1] = 1.0  # bottom right → class 2, but its target is ignore
    target = torch.tensor([[[0, 1], [1, 255]]])
    keys = F.normalize(torch.tensor([[1.0, 0.0], [0.3, 0.9]]), dim=1)
    loss.queue.push(keys, torch.tensor([0, 1]), gather=False)
    value = loss([torch.zeros(1, 4, 2, 2), torch.zeros(1, 6, 1, 1)], logits, target)
    centres = F.normalize(torch.tensor([[0.75, 0.25], [0.0, 1.0]]), dim=1)  # class 0, class 1
    want = 0.1 * ref.supcon(
        centres.numpy(), [0, 1], 0.2, 0.2, queue=keys.numpy(), queue_labels=[0, 1]
    )
    assert value.item() == pytest.approx(want, rel=1e-5)
    assert loss.queue.count.tolist() == [2, 2, 0]  # the two centres were pushed after
