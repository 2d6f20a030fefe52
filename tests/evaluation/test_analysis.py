import math

import pytest
import torch

from contextrast import create_model
from contextrast.data import EvalTransform, build_dataset
from contextrast.evaluation.analysis import collect_head_inputs, head_input, similarity_by_distance
from tests.data import fixtures


def test_similarity_by_distance_hand_case():
    # One row: GT class 1 on pixels 1–5, all predicted 0: error distances 1, 2, 3, 2, 1.
    labels = torch.tensor([[[0, 1, 1, 1, 1, 1, 0]]])
    pred = torch.zeros_like(labels)
    s = 1 / math.sqrt(2)
    vectors = [[1, 0], [0, 1], [1, 0], [s, s], [1, 0], [0, 1], [1, 0]]
    embeddings = torch.tensor(vectors, dtype=torch.float32).t().reshape(1, 2, 1, 7)
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sums, counts = similarity_by_distance(embeddings, labels, pred, anchors, max_distance=3)
    assert counts.tolist() == [2, 2, 1]
    assert sums.tolist() == pytest.approx([2.0, 0.0, s])  # cos with class 1's anchor
    sums, counts = similarity_by_distance(embeddings, labels, pred, anchors, max_distance=2)
    assert counts.tolist() == [2, 3] and sums[1].item() == pytest.approx(s)  # 3 -> last bin


def test_head_input_is_what_the_classifier_sees():
    model = create_model("hrnetv2_w18_small", num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    x = head_input(model, images)
    assert x.shape == (2, model.decode_head.classifier.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.decode_head.classifier(x), model(images).logits, atol=1e-5)


def test_collect_head_inputs_is_bounded_per_class(tmp_path):
    root = fixtures.folder(tmp_path / "f")
    dataset = build_dataset("folder", root=root, split="val", transform=EvalTransform())
    model = create_model("hrnetv2_w18_small", num_classes=3)
    embeddings, labels = collect_head_inputs(model, dataset, per_class=5)
    assert embeddings.shape == (labels.numel(), model.decode_head.classifier.in_channels)
    assert set(labels.tolist()) <= {0, 1, 2}
    assert max(int((labels == c).sum()) for c in range(3)) <= 5


def test_boundary_similarity_fuses_the_anchors_as_the_loss_does(tmp_path, monkeypatch):
    # Fig. 5 with Contextrast++'s learned fusion: the analysis runs the loss's own modules.
    from contextrast import ContextrastLoss
    from contextrast.evaluation import analysis

    root = fixtures.folder(tmp_path / "f")
    dataset = build_dataset("folder", root=root, split="val", transform=EvalTransform())
    torch.manual_seed(0)  # an untrained model whose prediction has errors in every layer
    model = create_model("hrnetv2_w18_small", num_classes=3)
    fixed = ContextrastLoss(3, model.feature_channels, embed_dim=8)
    adaptive = ContextrastLoss(3, model.feature_channels, embed_dim=8, anchor_fusion="adaptive")
    adaptive.heads.load_state_dict(fixed.heads.state_dict())
    calls = []
    fuse = analysis.adaptive_fuse
    monkeypatch.setattr(analysis, "adaptive_fuse", lambda *a: calls.append(a[3]) or fuse(*a))
    plain = analysis.boundary_similarity(model, fixed, dataset, max_distance=10)
    assert not calls
    learned = analysis.boundary_similarity(model, adaptive, dataset, max_distance=10)
    assert calls and all(calls)  # per image, normalised as the loss normalises
    assert learned[-1] == plain[-1]  # the last layer is never fused
    assert learned[0]["pixels"] == plain[0]["pixels"] and sum(plain[0]["pixels"]) > 0
    assert learned[0]["similarity"] != plain[0]["similarity"]  # the lowest layer is
