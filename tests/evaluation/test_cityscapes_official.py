"""This project's Cityscapes scores against the official evaluation (cityscapesScripts) on
the same files: class and category mIoU, class and category iIoU, label ids ↔ train ids."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contextrast.data import Cityscapes
from contextrast.data import metadata as meta
from contextrast.evaluation.evaluator import Evaluator

official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
labels_module = pytest.importorskip("cityscapesscripts.helpers.labels")

H, W = 48, 80
# Instance classes (label ids): person 24, rider 25, car 26, truck 27, bus 28, caravan 29
# (ignored in evaluation), train 31, motorcycle 32, bicycle 33.
INSTANCE_LABELS = (24, 25, 26, 27, 28, 29, 31, 32, 33)


def scene(g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds, instanceIds) of one image: a background of stuff labels (some ignored in
    evaluation), rectangles of instance classes of varied sizes (each its own instance id,
    some overlapping), and a crowd region without instance ids."""
    label = g.choice([0, 1, 4, 7, 8, 11, 17, 21, 23], size=(H // 8, W // 8))
    label = np.kron(label, np.ones((8, 8), dtype=np.int64))
    instances = label.copy()
    for k in range(int(g.integers(4, 9))):
        cls = int(g.choice(INSTANCE_LABELS))
        h, w = int(g.integers(2, 20)), int(g.integers(2, 30))
        y, x = int(g.integers(0, H - h)), int(g.integers(0, W - w))
        label[y : y + h, x : x + w] = cls
        instances[y : y + h, x : x + w] = cls * 1000 + k
    crowd = int(g.choice((24, 26)))
    label[-6:, :10] = crowd
    instances[-6:, :10] = crowd  # a crowd: no instance id (< 1000)
    return label, instances


def prediction(label: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Label ids of a noisy prediction: the ground truth's train class mostly, a random one
    elsewhere, mapped back to label ids (what a submission writes)."""
    train = meta.CITYSCAPES_LUT[label]
    noise = g.random(label.shape) < 0.3
    train = np.where((train == 255) | noise, g.integers(0, 19, label.shape), train)
    return np.asarray(meta.CITYSCAPES_TRAIN_TO_LABEL)[train]


def write(root: Path, images: int = 5, seed: int = 0) -> tuple[list[str], list[str]]:
    g = np.random.default_rng(seed)
    predictions, ground_truth = [], []
    for k in range(images):
        stem = f"frankfurt_{k:06d}_000019"
        folder = root / "gtFine" / "val" / "frankfurt"
        folder.mkdir(parents=True, exist_ok=True)
        image_dir = root / "leftImg8bit" / "val" / "frankfurt"
        image_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image_dir / f"{stem}_leftImg8bit.png")
        label, instances = scene(g)
        Image.fromarray(label.astype(np.uint8)).save(folder / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(instances.astype(np.uint16)).save(folder / f"{stem}_gtFine_instanceIds.png")
        pred_dir = root / "results"
        pred_dir.mkdir(exist_ok=True)
        path = pred_dir / f"{stem}_pred.png"
        Image.fromarray(prediction(label, g).astype(np.uint8)).save(path)
        predictions.append(str(path))
        ground_truth.append(str(folder / f"{stem}_gtFine_labelIds.png"))
    return predictions, ground_truth


def ours(root: Path, predictions: list[str]) -> dict:
    dataset = Cityscapes(root, "val", return_instances=True)
    evaluator = Evaluator(
        dataset.classes,
        dataset.ignore_index,
        boundary_widths=(),
        instance_classes=dataset.instance_classes,
        train_to_label=dataset.train_to_label,
        categories=dataset.categories,
    )
    by_stem = {Path(p).name.removesuffix("_pred.png"): p for p in predictions}
    for index in range(len(dataset)):
        sample = dataset[index]
        stem = dataset.items[index].image.name.removesuffix("_leftImg8bit.png")
        label_ids = np.asarray(Image.open(by_stem[stem]))
        pred = torch.from_numpy(meta.CITYSCAPES_LUT[label_ids].astype(np.int64))
        evaluator.update(pred, sample.label, dataset.read_instances(index))
    return evaluator.compute()


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_the_official_cityscapes_evaluation(tmp_path, monkeypatch, seed):
    predictions, ground_truth = write(tmp_path, seed=seed)
    # cityscapesScripts 2.3.0 calls np.in1d, which NumPy 2.4 removed; this is its definition.
    monkeypatch.setattr(
        np, "in1d", lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(), raising=False
    )
    args = official.args
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "evalInstLevelScore", True)
    monkeypatch.setattr(args, "evalPixelAccuracy", False)
    want = official.evaluateImgLists(predictions, ground_truth, args)
    got = ours(tmp_path, predictions)
    assert got["miou"] == pytest.approx(want["averageScoreClasses"], abs=1e-6)
    assert got["iiou"] == pytest.approx(want["averageScoreInstClasses"], abs=1e-6)
    assert got["category_miou"] == pytest.approx(want["averageScoreCategories"], abs=1e-6)
    assert got["category_iiou"] == pytest.approx(want["averageScoreInstCategories"], abs=1e-6)
    for name in meta.CITYSCAPES_CLASSES:  # per class too, NaN (absent) where it is NaN
        official_iou, own = want["classScores"][name], got["iou"][name]
        assert np.isnan(own) == np.isnan(official_iou), name
        if not np.isnan(official_iou):
            assert own == pytest.approx(official_iou, abs=1e-6), name
    assert sorted(meta.CITYSCAPES_CLASSES) == sorted(
        label.name for label in labels_module.labels if 0 <= label.trainId < 255
    )
    # The fixture exercises what it should: several instances of several classes, crowds.
    assert 0 < got["iiou"] < 1 and 0 < got["category_iiou"] < 1
