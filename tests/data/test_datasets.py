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
        build_dataset("cityscapes", root=tmp_path)
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
    assert (
        err
        == f"contextrast check-data: error: ade20k: dataset root {tmp_path}/missing does not exist"
    )
    assert main(["check-data", "--dataset", "cityscapes"]) == 2
    assert "--root is required" in capsys.readouterr().err


# ------------------------------------------------------------------ 16-bit and EXIF images


def write_png_rgb16(path, values: np.ndarray) -> None:
    """A 48-bit RGB PNG (Pillow cannot write one): values (H, W, 3) in 0..65535."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width, _ = values.shape
    rows = values.astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_a_16_bit_image_reads_as_its_8_bit_original(tmp_path):
    from contextrast.data.datasets import read_image
    from contextrast.data.transforms import EvalTransform

    grey = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    grey[0, :3] = [0, 128, 255]
    Image.fromarray(grey, mode="L").save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"  # a real 16-bit PNG
    eight, sixteen = read_image(tmp_path / "8.png"), read_image(tmp_path / "16.png")
    assert sixteen.dtype == torch.uint8 and sixteen.shape == (3, H, W)
    assert torch.equal(sixteen, eight)
    assert sixteen[:, 0, :3].tolist() == [[0, 128, 255]] * 3
    label = torch.zeros(H, W, dtype=torch.int64)
    assert torch.equal(EvalTransform()(sixteen, label)[0], EvalTransform()(eight, label)[0])
    # Values that are not 8-bit data keep their high byte (value >> 8).
    odd = np.array([[0, 255, 256, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    assert read_image(tmp_path / "odd.png")[0].tolist() == [[0, 0, 1, 3, 128, 255]]
    # ... as torchvision converts uint16 to uint8.
    from torchvision.transforms.v2.functional import to_dtype

    scaled = to_dtype(torch.from_numpy(odd.astype(np.int32)).to(torch.uint16), torch.uint8, True)
    assert torch.equal(read_image(tmp_path / "odd.png")[0], scaled)
    # 16-bit colour: the same rule (Pillow's own for 48-bit PNGs).
    colour = np.array([[[1000, 30000, 65535], [257 * 7, 257 * 200, 0]]])
    write_png_rgb16(tmp_path / "rgb16.png", colour)
    assert read_image(tmp_path / "rgb16.png").permute(1, 2, 0).tolist() == [
        [[3, 117, 255], [7, 200, 0]]
    ]
    # 32-bit integers beyond 16 bits (a TIFF given to predict) are refused, not clipped.
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(DatasetError, match=r"wide.tif: cannot read image \(32-bit integer "):
        read_image(tmp_path / "wide.tif")


def exif_jpeg(path, array: np.ndarray, orientation: int = 6) -> np.ndarray:
    """Write ``array`` as a JPEG with an EXIF orientation; return the stored pixels."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, exif=exif, quality=95)
    with Image.open(path) as img:
        assert img.getexif()[0x0112] == orientation
        return np.asarray(img.convert("RGB")).copy()


def test_exif_orientation_turns_images_upright_but_never_label_maps(tmp_path):
    from contextrast.data.datasets import read_image, read_label

    stored = exif_jpeg(tmp_path / "photo.jpg", fixtures.image_array(1))
    upright = read_image(tmp_path / "photo.jpg").permute(1, 2, 0).numpy()
    # Orientation 6: the camera was turned; viewers rotate 90 degrees clockwise.
    assert stored.shape == (H, W, 3) and upright.shape == (W, H, 3)
    assert (upright == np.rot90(stored, k=-1)).all()
    assert (upright[0, -1] == stored[0, 0]).all()  # top-left goes to top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    label = fixtures.stripes([0, 1, 2, 255])
    Image.fromarray(label.astype(np.uint8), mode="L").save(tmp_path / "label.png", exif=exif)
    assert Image.open(tmp_path / "label.png").getexif()[0x0112] == 6
    assert (read_label(tmp_path / "label.png") == label).all()  # as stored, never rotated


def test_labels_must_match_the_upright_image(tmp_path, capsys):
    root = fixtures.folder(tmp_path / "f")
    (root / "images" / "train" / "img0.png").unlink()
    exif_jpeg(root / "images" / "train" / "img0.jpg", fixtures.image_array(0))
    upright = fixtures.write_label(root / "labels" / "train" / "img0.png", np.ones((W, H)))
    dataset = build_dataset("folder", root=root)
    image, label = dataset.read(0)
    assert image.shape == (3, W, H) and label.shape == (W, H)
    report = check_dataset("folder", root=root)
    assert report.problems == []
    assert report.notes == (
        "1 image has an EXIF orientation: turned upright as viewers show them (labels must "
        "match the upright image)",
    )
    assert main(["check-data", "--dataset", "folder", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"note: {report.notes[0]}\n{root} [train]: 3 samples, no problems" in out
    # A label drawn on the stored (sideways) pixels: the size mismatch says why.
    fixtures.write_label(upright, np.ones((H, W)))
    with pytest.raises(DatasetError) as error:
        dataset.read(0)
    assert str(error.value) == (
        f"{upright}: label is 8x6 but image {root}/images/train/img0.jpg is 6x8 (width x "
        "height); expected the same size; the image's EXIF orientation 6 turns it upright from "
        "8x6 as stored: label maps are read as stored, so draw them on the upright image"
    )
    # A label map that carries an orientation itself is read as stored, and check-data says so.
    exif = Image.Exif()
    exif[0x0112] = 8
    label = root / "labels" / "train" / "img1.png"
    Image.fromarray(fixtures.stripes([0, 1, 255, 2]).astype(np.uint8)).save(label, exif=exif)
    assert check_dataset("folder", root=root).notes[-1] == (
        "1 label map has an EXIF orientation: not applied (label maps are read as stored)"
    )


def test_check_data_says_what_reading_does_to_16_bit_images(tmp_path, capsys):
    root = fixtures.folder(tmp_path / "f")
    for k in (0, 1):
        grey = (np.arange(H * W).reshape(H, W) * 5).astype(np.uint16) * 257
        Image.fromarray(grey).save(root / "images" / "train" / f"img{k}.png")
    report = check_dataset("folder", root=root)
    assert report.problems == [] and report.samples == 3
    assert report.notes == (
        "2 images have 16 bits per sample: read as 8 bits (the high byte, value >> 8)",
    )
    assert main(["check-data", "--dataset", "folder", "--root", str(root)]) == 0
    assert capsys.readouterr().out == (
        f"note: {report.notes[0]}\n{root} [train]: 3 samples, no problems\n"
    )
    image = build_dataset("folder", root=root).read(0)[0]
    assert image[0, 0, :3].tolist() == [0, 5, 10]  # 0, 5 · 257, 10 · 257 read back


# ------------------------------------------------------------------ labels without images, roots


def test_a_label_without_image_is_a_problem(tmp_path, capsys):
    root = fixtures.folder(tmp_path / "f")
    ghost = fixtures.write_label(root / "labels" / "train" / "ghost.png", fixtures.stripes([1]))
    message = (
        f"folder: no image for label {ghost} (expected {root}/images/train/ghost.png, .jpg "
        "or .jpeg)"
    )
    report = check_dataset("folder", root=root)
    assert report.samples == 3 and report.problems == [message]
    assert report.counts == {"label without image": 1}
    assert main(["check-data", "--dataset", "folder", "--root", str(root)]) == 1
    assert capsys.readouterr().out == (
        f"{message}\n{root} [train]: 3 samples checked, 1 problems: 1 label without image\n"
    )
    with pytest.raises(DatasetError) as error:
        build_dataset("folder", root=root)  # training stops as for an image without label
    assert str(error.value) == message
    # An image in a format the layout does not read leaves its label without image too.
    fixtures.write_image(root / "images" / "train" / "ghost.bmp")
    assert check_dataset("folder", root=root).problems == [message]
    # The other layouts name the image they expected.
    cs = fixtures.cityscapes(tmp_path / "cs")
    image = cs / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000001_000019_leftImg8bit.png"
    image.unlink()
    label = cs / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png"
    assert check_dataset("cityscapes", root=cs, split="val").problems == [
        f"cityscapes: no image for label {label} (expected {image})"
    ]
    coco = fixtures.coco_stuff(tmp_path / "coco")
    (coco / "images" / "val2017" / f"{1:012d}.jpg").unlink()
    for label_type, name in (
        ("labelTrainIds", f"{1:012d}_labelTrainIds.png"),
        ("raw", f"{1:012d}.png"),
    ):
        problems = check_dataset(
            "coco_stuff", root=coco, split="val", label_type=label_type
        ).problems
        assert problems == [
            f"coco_stuff: no image for label {coco}/annotations/val2017/{name} (expected "
            f"{coco}/images/val2017/{1:012d}.jpg)"
        ]


def test_a_missing_or_file_root_is_named_as_such(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    for name in ("folder", "cityscapes", "camvid", "pascal_context", "coco_stuff", "ade20k"):
        with pytest.raises(DatasetError) as error:
            build_dataset(name, root=missing)
        assert str(error.value) == f"{name}: dataset root {missing} does not exist"
    afile = tmp_path / "data.zip"
    afile.write_bytes(b"PK")
    with pytest.raises(
        DatasetError, match=f"^folder: dataset root {afile} is a file, not a folder$"
    ):
        build_dataset("folder", root=afile)
    assert main(["check-data", "--dataset", "folder", "--root", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"contextrast check-data: error: folder: dataset root {missing} does not exist\n"
    )


def test_two_images_of_one_name_are_not_paired_with_one_label(tmp_path):
    root = fixtures.folder(tmp_path / "f")
    first = sorted((root / "images" / "train").iterdir())[0]
    twin = fixtures.write_image(first.with_suffix(".jpg"))
    label = root / "labels" / "train" / f"{first.stem}.png"
    message = f"folder: images {twin} and {first} share the label {label}"  # sorted order
    report = check_dataset("folder", root=root)
    assert report.problems == [message] and report.counts == {"two images for one label": 1}
    with pytest.raises(DatasetError, match=r"share the label .*; keep one of them"):
        build_dataset("folder", root=root)
