import pytest
import torch

from contextrast.evaluation.inference import predict_probabilities, slide_logits, whole_logits


def identity(images):
    return images.clone()


def window_mean(images):
    return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()


def test_whole_resizes_low_resolution_logits():
    images = torch.ones(1, 2, 8, 8)
    out = whole_logits(lambda x: x[:, :, ::4, ::4], images, size_divisor=1)
    assert out.shape == (1, 2, 8, 8) and torch.allclose(out, images)


def test_sliding_window_averages_overlaps_by_hand():
    # Row 0..4; windows of 3 with stride 2 start at 0 and 2: means 1 and 3; pixel 2 sees both.
    images = torch.arange(5.0).view(1, 1, 1, 5)
    out = slide_logits(window_mean, images, crop=(1, 3), stride=(1, 2), size_divisor=1)
    assert out.flatten().tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]


def test_sliding_window_of_a_pointwise_model_is_exact_and_pads_small_images():
    images = torch.randn(2, 3, 7, 9)
    assert torch.allclose(slide_logits(identity, images, (4, 4), (3, 2)), images)
    assert torch.allclose(slide_logits(identity, images, (16, 16), (8, 8)), images)


def test_multi_scale_and_flip_average_probabilities():
    # A model that is not flip-equivariant: it adds a ramp along the width.
    ramp = torch.linspace(0, 1, 6).view(1, 1, 1, 6)

    def ramped(images):
        return images + ramp

    images = torch.randn(1, 2, 4, 6)
    out = predict_probabilities(ramped, images, scales=(1.0,), flip=True, size_divisor=1)
    plain = (images + ramp).softmax(1)
    flipped = (images.flip(-1) + ramp).flip(-1).softmax(1)  # = images + reversed ramp
    assert torch.allclose(out, (plain + flipped) / 2, atol=1e-6)
    # Constant images survive any rescale exactly: every scale gives the same probabilities.
    constant = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1).expand(1, 2, 8, 8)
    multi = predict_probabilities(identity, constant, scales=(0.75, 1.0, 1.5, 2.0), flip=True)
    assert torch.allclose(multi, constant.softmax(1), atol=1e-6)
    slide = predict_probabilities(
        identity, constant, mode="slide", crop=(4, 4), stride=(2, 2), scales=(0.5, 1.25)
    )
    assert torch.allclose(slide, constant.softmax(1), atol=1e-6)


def test_bad_mode_and_window():
    with pytest.raises(ValueError, match="unknown eval mode 'tile'"):
        predict_probabilities(identity, torch.zeros(1, 2, 4, 4), mode="tile")
    with pytest.raises(ValueError, match="must be positive"):
        slide_logits(identity, torch.zeros(1, 2, 4, 4), (0, 2), (1, 1))


def test_whole_pads_to_the_size_divisor_and_crops_back():
    seen = []

    def record(images):
        seen.append(tuple(images.shape[-2:]))
        return images.clone()

    images = torch.randn(1, 2, 45, 70)
    out = whole_logits(record, images)
    assert seen == [(64, 96)] and out.shape == (1, 2, 45, 70)
    assert torch.equal(out, images)
