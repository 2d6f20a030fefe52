import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contextrast.data import build_dataset
from contextrast.data.digits import STRONG, load_mnist_subset, split_indices


def test_source_digits_are_real_and_split_disjointly_within_classes():
    images, digits = load_mnist_subset()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(digits).tolist() == [500] * 10
    train, val = split_indices(digits, "train"), split_indices(digits, "val")
    assert not set(train) & set(val)
    assert np.bincount(digits[val]).tolist() == [100] * 10  # every digit in val


def test_scenes_are_deterministic_and_labelled_consistently():
    a = build_dataset("digits", split="train", length=20, seed=4)
    b = build_dataset("digits", split="train", length=20, seed=4)
    for index in range(20):
        image, label = a.read(index)
        image_b, label_b = b.read(index)
        assert torch.equal(image, image_b) and torch.equal(label, label_b)
        assert image.shape == (3, 96, 128) and image.dtype == torch.uint8
        values = set(label.unique().tolist())
        assert values <= set(range(11)) | {255}
        assert 1 <= len(values - {0, 255}) <= 5  # 2–5 digits, some may share a class
    other_seed = build_dataset("digits", split="train", length=1, seed=5)
    assert not torch.equal(other_seed.read(0)[1], a.read(0)[1])


def test_strong_stroke_pixels_carry_the_digit_label():
    # One digit on the canvas: where its resized stroke is strong, the label is digit + 1.
    dataset = build_dataset("digits", split="val", length=50, digits_per_image=(1, 1))
    _, digits = load_mnist_subset()
    for index in range(5):
        _, label = dataset.read(index)
        classes = set(label.unique().tolist()) - {0, 255}
        assert len(classes) == 1
        digit = classes.pop() - 1
        assert digit in set(digits[split_indices(digits, "val")].tolist())
        # Strong pixels form one blob as tall as a scaled digit (42–84 px) at most.
        rows = torch.nonzero((label == digit + 1).any(1)).squeeze(1)
        assert 10 <= int(rows.max() - rows.min()) + 1 <= 84


def test_rim_is_ignored():
    stroke = torch.linspace(0, 1, 11).view(1, 1, 1, 11)
    assert F.interpolate(stroke, size=(1, 11)).squeeze().gt(STRONG).sum() == 5
    dataset = build_dataset("digits", split="train", length=10)
    labels = torch.stack([dataset.read(i)[1] for i in range(10)])
    ignore_share = (labels == 255).float().mean().item()
    assert 0.01 < ignore_share < 0.15


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        build_dataset("digits", split="test")
    with pytest.raises(ValueError, match="larger than the canvas"):
        build_dataset("digits", size=(48, 48), scale_range=(1.5, 3.0))
    assert not build_dataset("digits", length=1).flip_invariant
