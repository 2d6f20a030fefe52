import numpy as np
import pytest
import torch
from PIL import Image

from contextrast.cli import main
from contextrast.data import DATASETS, DatasetError, build_dataset, check_dataset
from contextrast.data import metadata as meta
from tests.data import fixtures
from tests.data.fixtures import H, W


def label_columns(label: torch.Tensor) -> list[int]:
    """The value of each 2-column stripe (fixtures write vertical stripes)."""
    assert (label == label[0]).all()
    return label[0, ::2].tolist()


@pytest.mark.parametrize(
    ("name", "make", "kwargs", "length", "num_classes", "stripes"),
    [
        ("cityscapes", fixtures.cityscapes, {}, 4, 19, [0, 13, 255, 18]),
        ("camvid", fixtures.camvid, {}, 2, 11, [0, 3, 255, 10]),
        ("pascal_context", fixtures.pascal_context, {}, 2, 59, [255, 0, 58, 14]),
        ("pascal_context", fixtures.pascal_context, {"num_classes": 60}, 2, 60, [0, 1, 59, 15]),
        ("coco_stuff", fixtures.coco_stuff, {}, 2, 171, [0, 170, 255, 91]),
        ("coco_stuff", fixtures.coco_stuff, {"label_type": "raw"}, 2, 171, [0, 11, 255, 170]),
        ("ade20k", fixtures.ade20k, {}, 2, 150, [255, 0, 149, 12]),
        ("folder", fixtures.folder, {}, 3, 3, [0, 1, 255, 2]),
    ],
)
def test_layouts_map_labels(tmp_path, name, make, kwargs, length, num_classes, stripes):
    root = make(tmp_path / name)
    dataset = build_dataset(name, root=root, split="train", **kwargs)
    assert len(dataset) == length
    assert dataset.num_classes == num_classes == len(dataset.classes)
    assert dataset.palette.shape == (num_classes, 3) and dataset.palette.dtype == np.uint8
    assert len({tuple(c) for c in dataset.palette}) == num_classes  # distinguishable colours
    sample = dataset[0]
    assert sample.image.shape == (3, H, W) and sample.image.dtype == torch.uint8
    assert sample.label.shape == (H, W) and sample.label.dtype == torch.int64
    assert label_columns(sample.label) == stripes
    assert sample.index == 0


def test_cityscapes_tables_and_instances(tmp_path):
    root = fixtures.cityscapes(tmp_path / "cs")
    dataset = build_dataset("cityscapes", root=root, split="val", return_instances=True)
    assert len(dataset) == 2
    sample = dataset[1]
    assert sample.instances.shape == (H, W) and int(sample.instances[0, 2]) == 26001
    assert dataset.classes[13] == "car" and tuple(dataset.palette[13]) == (0, 0, 142)
    assert meta.CITYSCAPES_LABEL_TO_TRAIN[26] == 13 and meta.CITYSCAPES_TRAIN_TO_LABEL[13] == 26
    # Both tables are inverse on the 19 classes.
    for train_id, label_id in enumerate(meta.CITYSCAPES_TRAIN_TO_LABEL):
        assert meta.CITYSCAPES_LABEL_TO_TRAIN[label_id] == train_id
    assert [dataset.classes[i] for i in dataset.instance_classes] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ]  # fmt: skip
    assert dataset.categories[0] == "flat" and dataset.categories[18] == "vehicle"


def test_class_tables_have_the_documented_sizes():
    assert len(meta.ADE20K_CLASSES) == 150 and len(set(meta.ADE20K_CLASSES)) == 150
    assert len(meta.COCO_STUFF_CLASSES) == 171
    assert len(meta.PASCAL_CONTEXT_CLASSES_59) == 59
    assert (meta.COCO_STUFF_RAW_LUT[:182] >= 0).sum() == 171
    assert meta.COCO_STUFF_RAW_LUT[181] == 170 and meta.COCO_STUFF_RAW_LUT[11] == -1


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'voc'; choose from \['ade20k'"):
        build_dataset("voc", root=".")
    assert sorted(DATASETS) == [
        "ade20k", "camvid", "cityscapes", "coco_stuff", "digits", "folder", "inia19",
        "pascal_context",
    ]  # fmt: skip


# ------------------------------------------------------------------ bad input


def test_missing_root_or_split_names_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"cityscapes: folder .*leftImg8bit/train not found"):
        build_dataset("cityscapes", root=tmp_path / "nowhere")
    root = fixtures.camvid(tmp_path / "camvid")
    with pytest.raises(DatasetError, match=r"folder .*trainval not found \(expected"):
        build_dataset("camvid", root=root, split="trainval")


def test_image_without_label_fails_at_build(tmp_path):
    root = fixtures.folder(tmp_path / "f")
    (root / "labels" / "train" / "img1.png").unlink()
    with pytest.raises(
        DatasetError, match=r"no label for image .*img1.png \(expected .*img1.png\)"
    ):
        build_dataset("folder", root=root)


def test_size_mismatch_fails_at_read(tmp_path):
    root = fixtures.folder(tmp_path / "f")
    fixtures.write_label(root / "labels" / "train" / "img0.png", np.zeros((5, 8)))
    dataset = build_dataset("folder", root=root)
    with pytest.raises(DatasetError, match=r"img0.png: label is 8x5 but image .* is 8x6"):
        dataset[0]


def test_label_values_outside_classes_fail_at_read(tmp_path):
    root = fixtures.folder(tmp_path / "f")
    fixtures.write_label(root / "labels" / "train" / "img1.png", fixtures.stripes([0, 7, 200]))
    dataset = build_dataset("folder", root=root)
    with pytest.raises(
        DatasetError, match=r"img1.png: label values \[7, 200\] .* class ids 0-2 or 255"
    ):
        dataset[1]
    camvid = build_dataset("camvid", root=fixtures.camvid(tmp_path / "c"))
    fixtures.write_label(camvid.items[0].label, fixtures.stripes([12]))
    with pytest.raises(DatasetError, match=r"values \[12\] are not camvid labels .* 0-11, 255"):
        camvid[0]


def test_corrupt_image_and_rgb_label_fail_clearly(tmp_path):
    root = fixtures.folder(tmp_path / "f")
    (root / "images" / "train" / "img0.png").write_bytes(b"\x89PNG broken")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "labels" / "train" / "img1.png")
    dataset = build_dataset("folder", root=root)
    with pytest.raises(DatasetError, match=r"img0.png: cannot read image"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"img1.png: label map must be a single-channel"):
        dataset[1]


def test_folder_needs_class_names_or_count(tmp_path):
    root = fixtures.folder(tmp_path / "f", classes=None)
    with pytest.raises(DatasetError, match=r"no class list .*classes.txt and no num_classes"):
        build_dataset("folder", root=root)
    assert build_dataset("folder", root=root, num_classes=4).classes[3] == "class 3"
    named = fixtures.folder(tmp_path / "g")
    assert build_dataset("folder", root=named).classes == ("sky", "road", "car")


def test_check_data_reports_every_problem_with_counts(tmp_path, capsys):
    root = fixtures.folder(tmp_path / "f")
    train = root / "images" / "train"
    fixtures.write_image(train / "extra.png", 5)  # no label
    (train / "img0.png").write_bytes(b"garbage")
    fixtures.write_label(root / "labels" / "train" / "img1.png", fixtures.stripes([9]))
    fixtures.write_label(root / "labels" / "train" / "img2.png", np.zeros((2, 2)))
    report = check_dataset("folder", root=root, split="train")
    assert report.samples == 3
    assert report.counts == {
        "image without label": 1,
        "unreadable image": 1,
        "label values outside classes": 1,
        "size mismatch": 1,
    }
    assert main(["check-data", "--dataset", "folder", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "3 samples checked, 4 problems: 1 image without label, 1 label values" in out
    clean = fixtures.folder(tmp_path / "clean")
    assert main(["check-data", "--dataset", "folder", "--root", str(clean), "--split", "val"]) == 0
    assert "3 samples, no problems" in capsys.readouterr().out


def test_check_data_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["check-data", "--dataset", "ade20k", "--root", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("contextrast check-data: error: ade20k: folder")
    assert main(["check-data", "--dataset", "cityscapes"]) == 2
    assert "--root is required" in capsys.readouterr().err
