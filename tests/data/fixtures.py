"""Tiny dataset trees in each dataset's exact on-disk layout, with known label values.

Images are 6 × 8 (H × W) RGB, written as PNG or JPEG as the real datasets are; label maps are
8-bit single-channel PNGs; Cityscapes instance maps are 16-bit PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 6, 8


def image_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_label(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def stripes(values: list[int]) -> np.ndarray:
    """(H, W) label map whose column blocks take ``values`` in turn (2 columns each)."""
    row = np.repeat(np.array(values * (W // (2 * len(values)) + 1)), 2)[:W]
    return np.tile(row, (H, 1))


def cityscapes(root: Path) -> Path:
    # labelIds 7 road, 26 car, 0 unlabeled, 33 bicycle -> trainIds 0, 13, 255, 18.
    for split, cities in {"train": ["aachen", "bremen"], "val": ["frankfurt"]}.items():
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k)
                label = stripes([7, 26, 0, 33])
                write_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
                instances = label.astype(np.uint16)
                instances[:, 2:4] = 26000 + k  # one car instance per image
                path = root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"
                Image.fromarray(instances).save(path)
    return root


def camvid(root: Path) -> Path:
    for split in ("train", "val", "test"):
        for k in range(2):
            write_image(root / split / f"0001TP_{k:06d}.png", k)
            write_label(root / f"{split}annot" / f"0001TP_{k:06d}.png", stripes([0, 3, 11, 10]))
    return root


def pascal_context(root: Path) -> Path:
    names = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for split, stems in names.items():
        listing = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("\n".join(stems) + "\n")
        for k, stem in enumerate(stems):
            write_image(root / "JPEGImages" / f"{stem}.jpg", k)
            write_label(root / "SegmentationClassContext" / f"{stem}.png", stripes([0, 1, 59, 15]))
    return root


def coco_stuff(root: Path) -> Path:
    for split in ("train2017", "val2017"):
        for k in range(2):
            stem = f"{k:012d}"
            write_image(root / "images" / split / f"{stem}.jpg", k)
            annotations = root / "annotations" / split
            write_label(annotations / f"{stem}_labelTrainIds.png", stripes([0, 170, 255, 91]))
            # Raw stuffthingmaps: 0 person, 12 (first id after the unused 11) -> 11, 181 -> 170.
            write_label(annotations / f"{stem}.png", stripes([0, 12, 255, 181]))
    return root


def ade20k(root: Path) -> Path:
    for split in ("training", "validation"):
        for k in range(2):
            stem = f"ADE_{split[:5]}_{k:08d}"
            write_image(root / "images" / split / f"{stem}.jpg", k)
            write_label(root / "annotations" / split / f"{stem}.png", stripes([0, 1, 150, 13]))
    return root


def folder(root: Path, classes: list[str] | None = ("sky", "road", "car")) -> Path:
    for split in ("train", "val"):
        for k in range(3):
            suffix = ".jpg" if k == 2 else ".png"
            write_image(root / "images" / split / f"img{k}{suffix}", k)
            write_label(root / "labels" / split / f"img{k}.png", stripes([0, 1, 255, 2]))
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root
