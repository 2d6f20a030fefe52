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
    for weight in (-1, math.nan, math.inf, "1", None, True):
        with pytest.raises(ValueError, match=r"weight: must be a finite number >= 0, got"):
            RegionLoss("dice", weight=weight)
    for ignore in (2.5, None, "x"):
        with pytest.raises(ValueError, match=r"ignore_index: must be an int, got"):
            RegionLoss("dice", ignore_index=ignore)
    with pytest.raises(ValueError, match=r"logits must be \(B, N, H, W\) and target \(B, H, W\)"):
        RegionLoss("dice")(logits(), torch.zeros(1, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["lovasz", "dice", "jaccard"])
def test_bad_targets_are_refused_not_scored(name):
    loss = RegionLoss(name)
    for bad in (7, 3, -1):  # 3 classes: 3 is out of range; 255 is ignore
        target = TARGET.clone()
        target[0, 0, 0] = bad
        with pytest.raises(ValueError, match=rf"labels must be in \[0, 3\) or ignore_index 255; "
                           rf"found {bad}"):  # fmt: skip
            loss(logits(), target)
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(ValueError, match=r"target: must hold integer class indices"):
            loss(logits(), TARGET.clamp(max=1).to(dtype))
    with pytest.raises(ValueError, match=r"needs N >= 2 classes, got 1"):
        loss(torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 3, dtype=torch.long))
    # uint8 labels with 255 score as the int64 ones; an empty batch is 0
    same = loss(logits(), TARGET.to(torch.uint8)).item()
    assert same == pytest.approx(loss(logits(), TARGET).item())
    empty = loss(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long))
    assert empty.item() == 0.0


def test_config_reaches_the_constructor_and_names_a_bad_value():
    assert build_region(config_from_dict({})) is None  # off unless asked for
    region = build_region(config_from_dict({"loss": {"region": {"name": "lovasz"}}}))
    assert region.name == "lovasz" and region.weight == RegionLoss().weight
    with pytest.raises(ConfigError, match=r"loss.region.name: 'focal' is not one of"):
        config_from_dict({"loss": {"region": {"name": "focal"}}})
    for weight in (-0.5, math.inf):  # refused when the config is read, whatever the name
        with pytest.raises(ConfigError, match=r"loss.region.weight: must be a finite number"):
            config_from_dict({"loss": {"region": {"name": "none", "weight": weight}}})


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
