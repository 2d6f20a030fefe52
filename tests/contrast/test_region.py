import math

import pytest
import torch

from contextrast.config import ConfigError, config_from_dict
from contextrast.contrast import RegionLoss
from contextrast.engine.builders import build_region
from contextrast.engine.step import TrainingModule
from contextrast.models import create_model

# Three pixels of one 1 × 3 image, three classes, softmax probabilities chosen so that every
# value below can be checked by hand: A is class 0, B class 1, C ignored; class 2 is absent.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])  # (pixel, class)
TARGET = torch.tensor([[[0, 1, 255]]])  # (1, 1, 3)


def logits(probs: torch.Tensor = PROBS) -> torch.Tensor:
    """(1, 3, 1, 3) logits whose softmax over classes is ``probs``."""
    return probs.log().T.reshape(1, 3, 1, 3).clone().requires_grad_(True)


def test_dice_by_hand():
    # class 0: 1 - 2·0.7 / (0.7 + 0.2 + 1) = 1 - 1.4/1.9; class 1: 1 - 2·0.6 / (0.2 + 0.6 + 1)
    # = 1 - 1.2/1.8; class 2 has no labelled pixel and counts 0 in the mean over 3 classes.
    expected = ((1 - 1.4 / 1.9) + (1 - 1.2 / 1.8) + 0) / 3
    value = RegionLoss("dice")(logits(), TARGET)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_jaccard_by_hand():
    # class 0: 1 - 0.7 / (0.9 + 1 - 0.7); class 1: 1 - 0.6 / (0.8 + 1 - 0.6); class 2: 0.
    expected = ((1 - 0.7 / 1.2) + (1 - 0.6 / 1.2) + 0) / 3
    value = RegionLoss("jaccard")(logits(), TARGET)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_lovasz_softmax_by_hand():
    # Class 0: errors |1 - 0.7| = 0.3 (A, foreground) and |0 - 0.2| = 0.2 (B), sorted A, B.
    # Jaccard loss of the prefixes {A}: 1 - 0/1 = 1, {A, B}: 1 - 0/2 = 1, so the Lovász
    # gradient is (1, 0) and the loss 0.3. Class 1: B (0.4, foreground) then A (0.2): 0.4.
    # Class 2 is absent from the labels and not averaged (Lovász-softmax's "present").
    value = RegionLoss("lovasz")(logits(), TARGET)
    assert value.item() == pytest.approx((0.3 + 0.4) / 2, abs=1e-6)


@pytest.mark.parametrize("name", ["lovasz", "dice", "jaccard"])
def test_weight_scales_and_the_ignored_pixel_does_not_count(name):
    base = RegionLoss(name)(logits(), TARGET)
    assert RegionLoss(name, weight=2.5)(logits(), TARGET).item() == pytest.approx(
        2.5 * base.item(), rel=1e-6
    )
    other = PROBS.clone()
    other[2] = torch.tensor([0.45, 0.45, 0.1])  # only the ignored pixel changes
    assert RegionLoss(name)(logits(other), TARGET).item() == pytest.approx(base.item(), abs=1e-7)
    x = logits()
    RegionLoss(name)(x, TARGET).backward()
    assert x.grad[..., 2].abs().max() == 0 and x.grad[..., :2].abs().max() > 0


@pytest.mark.parametrize("name", ["lovasz", "dice", "jaccard"])
def test_a_batch_without_labelled_pixels_gives_zero_with_a_graph(name):
    x = logits()
    value = RegionLoss(name)(x, torch.full_like(TARGET, 255))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown region loss 'focal'; choose from \['none'"):
        RegionLoss("focal")
    with pytest.raises(ValueError, match=r"weight: must be >= 0, got -1"):
        RegionLoss("dice", weight=-1)
    with pytest.raises(ValueError, match=r"weight: must be >= 0, got nan"):
        RegionLoss("dice", weight=math.nan)
    with pytest.raises(ValueError, match=r"logits must be \(B, N, H, W\) and target \(B, H, W\)"):
        RegionLoss("dice")(logits(), torch.zeros(1, 2, 3, dtype=torch.long))


def test_config_reaches_the_constructor_and_names_a_bad_value():
    assert build_region(config_from_dict({})) is None  # off unless asked for
    region = build_region(config_from_dict({"loss": {"region": {"name": "lovasz"}}}))
    assert region.name == "lovasz" and region.weight == RegionLoss().weight
    with pytest.raises(ConfigError, match=r"loss.region.name: 'focal' is not one of"):
        config_from_dict({"loss": {"region": {"name": "focal"}}})
    with pytest.raises(ConfigError, match=r"loss.region: weight: must be >= 0"):
        build_region(config_from_dict({"loss": {"region": {"name": "dice", "weight": -0.5}}}))


def test_training_module_adds_the_region_term_on_the_upsampled_logits():
    torch.manual_seed(0)
    model = create_model("hrnetv2_w18_small", num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    target[0, :4] = 255
    region = RegionLoss("lovasz", weight=0.5)
    terms = TrainingModule(model, None, region=region)(images, target)
    plain = TrainingModule(model, None)(images, target)
    up = torch.nn.functional.interpolate(
        model(images).logits, size=(32, 32), mode="bilinear", align_corners=False
    )
    assert terms.region.item() == pytest.approx(region(up, target).item(), rel=1e-5)
    assert terms.total.item() == pytest.approx(plain.total.item() + terms.region.item(), rel=1e-5)
    assert plain.region.item() == 0.0
    # weight 0 is no term at all (no smp call, no cost)
    assert TrainingModule(model, None, region=RegionLoss("dice", weight=0)).region is None
