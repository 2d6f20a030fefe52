import math

import numpy as np
import pytest
import torch

from contextrast.data import metadata as meta
from contextrast.evaluation.evaluator import CITYSCAPES_AVG_CLASS_SIZE, Evaluator


def cityscapes_evaluator():
    return Evaluator(
        meta.CITYSCAPES_CLASSES,
        boundary_widths=[1],
        instance_classes=meta.CITYSCAPES_INSTANCE_CLASSES,
        train_to_label=meta.CITYSCAPES_TRAIN_TO_LABEL,
        categories=meta.CITYSCAPES_CATEGORIES,
    )


def test_iiou_and_category_scores_by_hand():
    road, car, truck = 0, 13, 14
    target = torch.full((1, 2, 6), road)
    instances = torch.full((1, 2, 6), 7)  # road's labelId, no instance
    # Car instance A: 4 pixels, 3 predicted car. Car instance B: 2 pixels, 1 predicted truck.
    target[0, 0, :4] = car
    instances[0, 0, :4] = 26000
    target[0, 1, :2] = car
    instances[0, 1, :2] = 26001
    pred = torch.full((1, 2, 6), road)
    pred[0, 0, :3] = car
    pred[0, 1, 0] = truck
    pred[0, 1, 4:6] = car  # two road pixels predicted car: false positives
    evaluator = cityscapes_evaluator()
    evaluator.update(pred, target, instances)
    result = evaluator.compute()
    avg = CITYSCAPES_AVG_CLASS_SIZE["car"]
    tp = 3 * avg / 4
    fn = 1 * avg / 4 + 2 * avg / 2
    car_iiou = tp / (tp + 2 + fn)
    # Truck has no instance but one false positive: 0 / (0 + 1 + 0) = 0, as cityscapesScripts
    # scores it; the other instance classes count nothing at all and are NaN, skipped.
    assert result["iiou"] == pytest.approx((car_iiou + 0.0) / 2)
    # Category "vehicle": the truck pixel of instance B counts as a hit.
    tp_cat, fn_cat = 3 * avg / 4 + 1 * avg / 2, 1 * avg / 4 + 1 * avg / 2
    vehicle_iiou = tp_cat / (tp_cat + 2 + fn_cat)
    assert result["category_iiou"] == pytest.approx(vehicle_iiou)
    # Category IoU: flat (road) tp 4, fn 2, fp 2; vehicle tp 4, fn 2, fp 2.
    assert result["category_miou"] == pytest.approx(0.5)
    # Class IoU: road 4 / (4 + 2 + 2), car 3 / (3 + 3 + 2), truck 0 / 1.
    assert result["iou"]["road"] == pytest.approx(0.5) and result["iou"]["car"] == pytest.approx(
        3 / 8
    )
    assert result["iou"]["truck"] == 0.0 and math.isnan(result["iou"]["bus"])
    assert result["miou"] == pytest.approx((0.5 + 3 / 8 + 0) / 3)


def test_instance_ids_at_or_below_1000_are_not_instances():
    evaluator = cityscapes_evaluator()
    target = torch.full((1, 1, 2), 13)
    evaluator.update(target.clone(), target, torch.full((1, 1, 2), 26))  # car without ids
    assert math.isnan(evaluator.compute()["iiou"])


def test_accumulates_over_images_and_reports_boundaries():
    evaluator = Evaluator(["a", "b"], boundary_widths=[1, 3])
    target = torch.tensor([[0, 0, 0, 1, 1, 1]])
    evaluator.update(target, target)
    evaluator.update(torch.zeros_like(target), target)
    result = evaluator.compute()
    assert result["images"] == 2
    assert evaluator.confusion.tolist() == [[6, 0], [3, 3]]
    assert result["pixel_accuracy"] == pytest.approx(9 / 12)
    # Band of width 1: pixels 2 and 3 of each image.
    assert evaluator.boundary[0].tolist() == [[2, 0], [1, 1]]
    assert set(result["boundary_miou"]) == {"1", "3"}
    assert "iiou" not in result


def test_training_pixel_thirds_are_reported_beside_miou():
    # a, b frequent in training, c rare: head a, middle b, tail c.
    evaluator = Evaluator(["a", "b", "c"], boundary_widths=[1], class_pixels=[90, 9, 1])
    target = torch.tensor([[0, 0, 1, 1, 2, 2]])
    evaluator.update(torch.tensor([[0, 0, 1, 1, 1, 2]]), target)
    result = evaluator.compute()
    # IoU a 1, b 2 / 3, c 1 / 2
    assert result["frequency_miou"] == pytest.approx({"head": 1.0, "middle": 2 / 3, "tail": 0.5})
    assert "frequency_miou" not in Evaluator(["a", "b"]).compute()
    for bad in ([1, 2], [1, -2, 3], [1, float("nan"), 3], ["a", 2, 3], [True, 2, 3], 7):
        with pytest.raises(ValueError, match=r"class_pixels must be 3 ints >= 0 \(training"):
            Evaluator(["a", "b", "c"], class_pixels=bad)
    # a tensor or an array of counts is taken as the list
    for counts in (torch.tensor([90, 9, 1]), np.array([90, 9, 1])):
        assert Evaluator(["a", "b", "c"], class_pixels=counts).class_pixels == [90, 9, 1]
    # two classes make no thirds: none reported rather than an always-NaN tail
    assert "frequency_miou" not in Evaluator(["a", "b"], class_pixels=[5, 1]).compute()


def test_object_size_miou_scores_each_size_on_its_objects_pixels():
    # sizes (1, 2, 3): the ten 0s are a large object (> 9 px), the two 1s a small one.
    evaluator = Evaluator(["a", "b"], boundary_widths=[], object_sizes=[1, 2, 3])
    target = torch.tensor([[0] * 10 + [1, 1]])
    evaluator.update(torch.tensor([[0] * 9 + [1, 1, 0]]), target)
    result = evaluator.compute()["size_miou"]
    assert list(result) == ["tiny", "small", "medium", "large"]
    # large: a 9 / 10, b 0 (one false positive); small: b 1 / 2, a 0 (one false positive)
    assert result["large"] == pytest.approx(0.45) and result["small"] == pytest.approx(0.25)
    assert math.isnan(result["tiny"]) and math.isnan(result["medium"])
    assert evaluator.size.sum() == 12  # every labelled pixel in exactly one size
    assert "size_miou" not in Evaluator(["a", "b"], object_sizes=[]).compute()
    for bad in ([16, 32], [32, 16, 96], [0, 1, 2], [1.5, 2, 3], [True, 2, 3], "16", [1, 2, 2**17]):
        with pytest.raises(ValueError, match=r"object_sizes must be three increasing side"):
            Evaluator(["a", "b"], object_sizes=bad)
    for sizes in (
        (np.int64(1), np.int64(2), np.int64(3)),
        np.array([1, 2, 3]),
        torch.tensor([1, 2, 3]),
    ):
        assert Evaluator(["a", "b"], object_sizes=sizes).object_sizes == [1, 2, 3]
    # int8 labels and a transposed map: the same counts as int64 and a contiguous copy
    small = Evaluator(["a", "b"], boundary_widths=[1], object_sizes=[1, 2, 3])
    small.update(torch.tensor([[0] * 9 + [1, 1, 0]]).T, target.T.to(torch.int8))
    assert torch.equal(small.size, evaluator.size)
