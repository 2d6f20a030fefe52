import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contextrast.cli import main
from contextrast.data import build_dataset, check_dataset
from contextrast.data.inia19 import (
    ATLAS_FILE,
    BUILTIN_ROOT,
    DEFAULT_SOURCE,
    T1_FILE,
    fold_hemispheres,
    inia19_classes,
    prepare_inia19,
    slab_split,
)


def test_fold_hemispheres_maps_1000_plus_n_to_n():
    atlas = np.array([0, 3, 1003, 999, 1000, 1362])
    assert fold_hemispheres(atlas).tolist() == [0, 3, 3, 999, 0, 362]


def test_classes_are_the_largest_regions_then_other():
    # region 7: 5 voxels, region 2: 3, region 9: 3 (tie broken by id), region 4: 1
    folded = np.array([0, 7, 7, 7, 7, 7, 2, 2, 2, 9, 9, 9, 4, 0])
    regions, classes = inia19_classes(folded, num_regions=2)
    assert regions == [7, 2]
    assert classes.tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0]
    with pytest.raises(ValueError, match="num_regions must be below that, got 4"):
        inia19_classes(folded, num_regions=4)


def test_slab_split_leaves_a_gap_at_every_seam():
    positions = list(range(3, 40))
    out = slab_split(positions, slab=5, val_every=3, gap=2)
    # blocks 1, 4, 7 (positions 5–9, 20–24, 35–39) are val; 2 slices dropped each side
    assert out["val"] == [7, 22, 37, 38, 39]
    assert out["train"] == [12, 13, 14, 15, 16, 17, 27, 28, 29, 30, 31, 32]
    for t in out["train"]:
        assert all(abs(t - v) > 2 for v in out["val"])
    with pytest.raises(ValueError, match="gap >= 1"):
        slab_split(positions, slab=5, val_every=3, gap=0)


def write_volumes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 12×14×10 'brain': a box of T1 signal with three atlas regions in both hemispheres."""
    nibabel = pytest.importorskip("nibabel")
    shape = (12, 14, 10)
    t1 = np.zeros(shape, np.float32)
    t1[2:10, 2:12, 2:8] = np.linspace(50, 200, 6)  # varies along z (rows of a slice)
    atlas = np.zeros(shape, np.int16)
    atlas[2:6, 2:12, 2:5] = 5  # left hemisphere of region 5 (largest)
    atlas[6:10, 2:12, 2:5] = 1005  # its right hemisphere
    atlas[2:10, 2:7, 5:8] = 8
    atlas[2:10, 7:11, 5:8] = 1003  # region 3, right side only
    atlas[2:10, 11, 5:8] = 0  # brain voxels the atlas leaves unlabelled -> ignore
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(t1, affine), folder / T1_FILE)
    nibabel.save(nibabel.Nifti1Image(atlas, affine), folder / ATLAS_FILE)
    return t1, atlas


def test_prepare_writes_folder_layout_with_labels_and_orientation(tmp_path):
    write_volumes(tmp_path / "src")
    out = tmp_path / "out"
    splits = prepare_inia19(
        out, tmp_path / "src", num_regions=2, min_brain=0.2, slab=3, val_every=2, gap=1
    )
    assert [s.orientation for s in splits] == ["sagittal", "coronal", "axial"]
    coronal = out / "coronal"
    assert (coronal / "classes.txt").read_text().split("\n")[:4] == [
        "background",
        "region 5",
        "region 8",
        "other",
    ]
    meta = json.loads((coronal / "split.json").read_text())
    assert meta["regions"] == [5, 8]
    assert not set(meta["slices"]["train"]) & set(meta["slices"]["val"])
    # Coronal slice y = 4: rows are z from superior (z = 9) down, columns are x.
    name = "coronal_004.png"
    split = "train" if 4 in meta["slices"]["train"] else "val"
    label = np.asarray(Image.open(coronal / "labels" / split / name))
    image = np.asarray(Image.open(coronal / "images" / split / name))
    assert label.shape == image.shape == (10, 12)
    row = lambda z: 9 - z  # noqa: E731
    assert label[row(3), 3] == 1 and label[row(3), 8] == 1  # both hemispheres of region 5
    assert label[row(6), 4] == 2  # region 8
    assert label[row(0), 0] == 0  # outside the brain
    assert image[row(0), 0] == 0 and image[row(7), 5] > image[row(2), 5] > 0
    # the unlabelled brain column y = 11 is ignore
    axial = out / "axial"
    meta_axial = json.loads((axial / "split.json").read_text())
    z = 7
    split = "train" if z in meta_axial["slices"]["train"] else "val"
    assert z in meta_axial["slices"][split]
    axial_label = np.asarray(Image.open(axial / "labels" / split / f"axial_{z:03d}.png"))
    assert axial_label.shape == (14, 12)
    assert axial_label[13 - 11, 4] == 255  # y = 11 (anterior up), brain, unlabelled
    assert axial_label[13 - 8, 4] == 3  # region 3: "other"
    report = check_dataset("folder", root=coronal, split="train")
    assert not report.problems and report.samples == len(meta["slices"]["train"])


def test_prepare_errors_name_the_missing_file_and_bad_orientation(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=f"{T1_FILE} not found; it ships in Debian"):
        prepare_inia19(tmp_path / "out", tmp_path)
    write_volumes(tmp_path / "src")
    with pytest.raises(ValueError, match="unknown orientation 'oblique'"):
        prepare_inia19(tmp_path / "out", tmp_path / "src", orientations=["oblique"])
    assert main(["prepare", "inia19", "--source", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_builtin_set_is_the_prepared_coronal_slices():
    train = build_dataset("inia19", split="train")
    val = build_dataset("inia19", split="val")
    assert (len(train), len(val), train.num_classes) == (78, 25, 10)
    assert train.classes[0] == "background" and train.classes[-1] == "other"
    image, label = val.read(0)
    assert image.shape[1:] == label.shape == (128, 168)
    values = set(np.unique(label.numpy()).tolist())
    assert values <= set(range(10)) | {255} and {0, 9, 255} <= values
    files = [p for p in BUILTIN_ROOT.rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) < 1 << 20  # no file above 1 MB
    assert (BUILTIN_ROOT / "CREDIT.txt").read_text().startswith("Derived from the INIA19")


@pytest.mark.skipif(
    not (DEFAULT_SOURCE / T1_FILE).is_file(), reason="Debian's mricron-data is not installed"
)
def test_builtin_set_equals_a_fresh_build_from_mricron_data(tmp_path):
    prepare_inia19(tmp_path, orientations=["coronal"])
    built = sorted(p.relative_to(tmp_path / "coronal") for p in (tmp_path / "coronal").rglob("*"))
    shipped = sorted(p.relative_to(BUILTIN_ROOT) for p in BUILTIN_ROOT.rglob("*"))
    assert built == shipped
    for rel in built:
        if (tmp_path / "coronal" / rel).is_file():
            assert (tmp_path / "coronal" / rel).read_bytes() == (BUILTIN_ROOT / rel).read_bytes()


def listing(root: Path) -> dict[str, list[str]]:
    """The file names in each split folder of a prepared orientation."""
    return {
        f"{kind}/{split}": sorted(p.name for p in (root / kind / split).iterdir())
        for kind in ("images", "labels")
        for split in ("train", "val")
    }


def test_a_rerun_leaves_exactly_the_slices_it_reports(tmp_path, capsys, monkeypatch):
    import functools

    from contextrast import cli

    write_volumes(tmp_path / "src")
    out = tmp_path / "out"
    options = {"num_regions": 2, "min_brain": 0.2, "val_every": 2, "gap": 1}
    # Coronal slices y = 2..11 hold brain. Slabs of 3: blocks 3-5 and 9-11 val, the slices
    # next to a seam dropped -> train [7], val [4, 10, 11].
    first = prepare_inia19(out, tmp_path / "src", ["coronal"], slab=3, **options)
    assert (first[0].train, first[0].val, first[0].removed, first[0].foreign) == (1, 3, 0, [])
    coronal = out / "coronal"
    notes = coronal / "images" / "train" / "notes.txt"
    notes.write_text("mine")  # a user's file in a split folder
    (coronal / "README").write_text("mine too")
    # Slabs of 5: block 5-9 val -> train [2, 3, 11], val [6, 7, 8]; every earlier slice goes.
    build = functools.partial(prepare_inia19, slab=5, **options)
    monkeypatch.setattr(cli, "prepare_inia19", build)
    argv = ["prepare", "inia19", "--source", str(tmp_path / "src"), "--out", str(out)]
    assert main([*argv, "--orientations", "coronal"]) == 0
    assert capsys.readouterr().out == (
        f"{coronal}: 3 train, 3 val slices (8 slice files of an earlier build removed)\n"
        f"note: kept 1 files that prepare did not write: {notes}\n"
    )
    train = ["coronal_002.png", "coronal_003.png", "coronal_011.png"]
    val = ["coronal_006.png", "coronal_007.png", "coronal_008.png"]
    assert listing(coronal) == {
        "images/train": [*train, "notes.txt"],
        "images/val": val,
        "labels/train": train,
        "labels/val": val,
    }
    meta = json.loads((coronal / "split.json").read_text())
    assert meta["slices"] == {"train": [2, 3, 11], "val": [6, 7, 8]} and meta["slab"] == 5
    assert notes.read_text() == "mine" and (coronal / "README").read_text() == "mine too"
    assert check_dataset("folder", root=coronal).samples == 3
    # The same build again changes nothing and removes nothing.
    again = build(out, tmp_path / "src", ["coronal"])
    assert (again[0].train, again[0].val, again[0].removed) == (3, 3, 0)
    assert listing(coronal)["labels/train"] == train


def test_prepare_into_a_file_is_a_one_line_error(tmp_path, capsys):
    write_volumes(tmp_path / "src")
    afile = tmp_path / "data.txt"
    afile.write_text("not a folder")
    for out, culprit in ((afile, afile), (afile / "inia19", afile)):
        with pytest.raises(ValueError) as error:
            prepare_inia19(out, tmp_path / "src", num_regions=2)
        assert str(error.value) == f"output folder {out}: {culprit} is a file, not a folder"
        assert (
            main(["prepare", "inia19", "--source", str(tmp_path / "src"), "--out", str(out)]) == 2
        )
        assert capsys.readouterr().err == (
            f"contextrast prepare: error: output folder {out}: {culprit} is a file, not a folder\n"
        )
    out = tmp_path / "out"
    (out / "coronal").mkdir(parents=True)
    (out / "coronal" / "labels").write_text("")
    with pytest.raises(ValueError, match=f"{out}/coronal/labels is a file, not a folder$"):
        prepare_inia19(out, tmp_path / "src", num_regions=2)
    assert not (out / "sagittal").exists()  # refused before writing anything


@pytest.mark.parametrize("damage", ["truncated", "not_nifti"])
def test_a_damaged_volume_is_one_line_naming_it(tmp_path, capsys, damage):
    write_volumes(tmp_path / "src")
    atlas = tmp_path / "src" / ATLAS_FILE
    data = atlas.read_bytes()
    atlas.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"plain text")
    argv = ["prepare", "inia19", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"contextrast prepare: error: {atlas}: not a readable NIfTI volume (")
    assert err.count("\n") == 1
