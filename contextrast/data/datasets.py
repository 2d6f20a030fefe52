"""Datasets of the paper in their on-disk layouts (as mmsegmentation prepares them), and a
generic folder layout.

Every dataset knows its class names, palette and ignore index, checks its files when it is
built (missing folders, images without labels, labels without images) and each sample when it
is read (unreadable images, size mismatches, label values that name no class), with a one-line
error naming the file and what was expected.

Images are read upright and as 8-bit RGB: an EXIF orientation is applied (as image viewers and
``torchvision.io.decode_image(..., apply_exif_orientation=True)`` do) and 16-bit images keep
their high byte (``value >> 8``, as Pillow reads 16-bit colour PNGs and as torchvision's
``to_dtype(torch.uint8, scale=True)`` converts uint16), so that an 8-bit image stored as
``value · 257`` reads exactly as the 8-bit file. Label maps are read as stored: no EXIF
orientation, 8-bit only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from contextrast.data import metadata as meta

__all__ = [
    "ADE20K",
    "CamVid",
    "Cityscapes",
    "CocoStuff",
    "DatasetError",
    "Folder",
    "Item",
    "PascalContext",
    "Sample",
    "SegmentationDataset",
    "sample_seed",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A problem with a dataset's files; the message names the file."""


class Sample(NamedTuple):
    """One training or evaluation sample.

    image: (3, H, W) float32, normalised (uint8 when the dataset has no transform).
    label: (H, W) int64 class ids, ``ignore_index`` where unlabelled.
    index: position in the dataset.
    instances: (H, W) int64 Cityscapes instance ids (``labelId · 1000 + k``) when requested,
        else an empty (0,) tensor.
    """

    image: torch.Tensor
    label: torch.Tensor
    index: int
    instances: torch.Tensor


class Item(NamedTuple):
    image: Path
    label: Path
    instances: Path | None = None


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed that depends on (stream, seed, epoch, index) only; all non-negative."""
    entropy = [stream, seed, epoch, index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


#: the EXIF tag of the orientation (1 = as stored, 2–8 = mirrored and / or rotated)
EXIF_ORIENTATION = 0x0112


class ImageInfo(NamedTuple):
    """What :func:`read_image` does to a file beyond decoding it (header only, no pixels).

    size: (width, height) as stored; orientation: the EXIF orientation (1 when none);
    sixteen_bit: 16 bits per sample, read as their high byte.
    """

    size: tuple[int, int]
    orientation: int
    sixteen_bit: bool

    @property
    def rotated(self) -> bool:
        return self.orientation in range(2, 9)


def _info(img: Image.Image) -> ImageInfo:
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if not isinstance(orientation, int):  # a malformed tag: ignored, as viewers do
        orientation = 1
    # the decoder's raw mode, e.g. "RGB;16B" for a 48-bit PNG (a plain tuple before Pillow 10)
    rawmode = img.tile[0][3] if img.tile else None
    sixteen = img.mode.startswith("I;16") or (isinstance(rawmode, str) and ";16" in rawmode)
    return ImageInfo(img.size, orientation, sixteen)


def inspect_image(path: Path) -> ImageInfo:
    """The :class:`ImageInfo` of an image file, from its header."""
    try:
        with Image.open(path) as img:
            return _info(img)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from None


def _rgb(img: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of a decoded image; 16-bit grey keeps its high byte."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img)
        if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise DatasetError(
                f"{path}: cannot read image (32-bit integer values {values.min()}..."
                f"{values.max()}; expected an 8- or 16-bit image)"
            )
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise DatasetError(
            f"{path}: cannot read image (32-bit floating-point pixels; expected an 8- or 16-bit "
            "image)"
        )
    # Pillow already reads 16-bit colour (RGB;16B) as its high byte.
    return np.asarray(img.convert("RGB"))


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB, upright (EXIF orientation applied); 16 bits per sample are read
    as their high byte (``value >> 8``)."""
    try:
        with Image.open(path) as img:
            if _info(img).rotated:
                img = ImageOps.exif_transpose(img)
            array = _rgb(img, path)
    except DatasetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_label(path: Path) -> np.ndarray:
    """(H, W) raw 8-bit label values; palette PNGs give their indices. Read as stored: an
    EXIF orientation is never applied to a label map."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DatasetError(
                    f"{path}: label map must be a single-channel 8-bit PNG (class index per "
                    f"pixel), got mode {img.mode}"
                )
            return np.asarray(img).copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read label map ({error})") from None


def _require_root(root: str | os.PathLike, dataset: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{dataset}: dataset root {root} {state}")
    return root


def _require_dir(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{dataset}: folder {path} not found (expected {layout})")
    return path


class SegmentationDataset(torch.utils.data.Dataset):
    """Base: a list of (image, label) files, a label lookup table and metadata.

    Args:
        items: the files.
        transform: ``transform(image uint8, label int64, generator) -> (image, label)``;
            None returns raw uint8 images.
        seed: base seed of the per-sample random generator.
        strict: raise on the first discovery problem; with False, problems are collected in
            ``self.problems`` and the affected files skipped (``contextrast check-data``).
    """

    name = "dataset"
    classes: tuple[str, ...] = ()
    palette: np.ndarray
    ignore_index = meta.IGNORE_INDEX
    #: whether a horizontal flip keeps every label valid (not so for digits)
    flip_invariant = True
    #: ships with the package: no ``root`` argument
    builtin = False
    lut: np.ndarray

    def __init__(
        self,
        items: Sequence[Item],
        transform: Callable | None = None,
        seed: int = 0,
        problems: list[str] | None = None,
    ):
        self.items = list(items)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.problems = problems or []
        if not hasattr(self, "palette"):
            self.palette = meta.generated_palette(len(self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (3, H, W) uint8, label (H, W) int64 class ids), validated."""
        item = self.items[index]
        image = read_image(item.image)
        raw = read_label(item.label)
        if tuple(raw.shape) != tuple(image.shape[1:]):
            info = inspect_image(item.image)
            hint = (
                f"; the image's EXIF orientation {info.orientation} turns it upright from "
                f"{info.size[0]}x{info.size[1]} as stored: label maps are read as stored, so "
                "draw them on the upright image"
                if info.rotated
                else ""
            )
            raise DatasetError(
                f"{item.label}: label is {raw.shape[1]}x{raw.shape[0]} but image {item.image} "
                f"is {image.shape[2]}x{image.shape[1]} (width x height); expected the same "
                f"size{hint}"
            )
        return image, torch.from_numpy(self._map_label(raw, item.label))

    def read_label_ids(self, index: int) -> np.ndarray:
        """(H, W) int64 class ids of sample ``index``, validated; reads the label file only
        (a fast scan of a whole split before training)."""
        path = self.items[index].label
        return self._map_label(read_label(path), path)

    def _map_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        mapped = self.lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0])[:8].tolist()
            raise DatasetError(
                f"{path}: label values {bad} are not {self.name} labels (expected "
                f"{self.label_help()})"
            )
        return mapped

    def label_help(self) -> str:
        defined = np.nonzero(self.lut >= 0)[0]
        return f"raw values {_ranges(defined)}"

    def read_instances(self, index: int) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64)

    def resolve(self, index: int) -> tuple[int, int]:
        """(sample index, epoch) of a possibly "virtual" index ``e · len + i``: indices past
        the end address later epochs' augmentation draws of sample i (the trainer's sampler
        uses them so that workers need no epoch state)."""
        if index < 0:
            raise IndexError(f"{self.name}: negative index {index}")
        epoch, index = divmod(index, len(self))
        return index, self.epoch + epoch

    def __getitem__(self, index: int) -> Sample:
        index, epoch = self.resolve(index)
        image, label = self.read(index)
        instances = self.read_instances(index)
        if self.transform is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            image, label = self.transform(image, label, generator)
        return Sample(image, label, index, instances)


def _ranges(values: Sequence[int]) -> str:
    values = list(values)
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _pair(
    images: Sequence[Path],
    label_for: Callable[[Path], Path],
    dataset: str,
    strict: bool,
    problems: list[str],
    instances_for: Callable[[Path], Path] | None = None,
    *,
    where: str,
    labels: Iterable[Path] | None = None,
    image_for: Callable[[Path], str] | None = None,
) -> list[Item]:
    """Items of the images that have a label; ``where`` names the split's folder(s) for the
    empty-split message. ``labels``: every label file of the split, so that those that no
    image names are problems too (``image_for(label)`` says which image was expected)."""
    images = sorted(images)
    items = []
    owner: dict[Path, Path] = {}
    for image in images:
        label = label_for(image)
        first = owner.setdefault(label, image)
        if first != image:  # NAME.png and NAME.jpg: one label cannot say which is meant
            message = f"{dataset}: images {first} and {image} share the label {label}"
            if strict:
                raise DatasetError(message + "; keep one of them")
            problems.append(message)
            continue
        if not label.is_file():
            message = f"{dataset}: no label for image {image} (expected {label})"
            if strict:
                raise DatasetError(message)
            problems.append(message)
            continue
        items.append(Item(image, label, instances_for(image) if instances_for else None))
    if not items:
        message = f"{dataset}: no image/label pairs found in {where}"
        if strict:
            raise DatasetError(message)
        problems.append(message)
        return items  # that message covers the split's labels too
    if labels is not None:
        named = {label_for(image) for image in images}
        for label in sorted(set(labels) - named):
            expected = image_for(label) if image_for else "an image of the same name"
            message = f"{dataset}: no image for label {label} (expected {expected})"
            if strict:
                raise DatasetError(message)
            problems.append(message)
    return items


def _any_image(folder: Path, stem: str) -> str:
    """The expected image files of a label, e.g. ``DIR/NAME.png, .jpg or .jpeg``."""
    first, *others = IMAGE_SUFFIXES
    return f"{folder / stem}{first}, {', '.join(others[:-1])} or {others[-1]}"


def _stem_pairs(
    dataset: str, images_dir: Path, labels_dir: Path, split: str, strict: bool, suffix: str = ""
) -> tuple[list[Item], list[str]]:
    """The layout most sets share: ``images_dir/NAME.<image>`` with ``labels_dir/NAME.png``
    (any image suffix, or only ``suffix``); returns the items and the problems found."""
    problems: list[str] = []
    images = [
        p
        for p in images_dir.iterdir()
        if p.suffix.lower() == suffix or (not suffix and p.suffix.lower() in IMAGE_SUFFIXES)
    ]
    items = _pair(
        images,
        lambda image: labels_dir / f"{image.stem}.png",
        dataset,
        strict,
        problems,
        where=f"split {split!r} ({images_dir})",
        labels=labels_dir.glob("*.png"),
        image_for=lambda label: (
            str(images_dir / f"{label.stem}{suffix}")
            if suffix
            else _any_image(images_dir, label.stem)
        ),
    )
    return items, problems


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations.

    Layout: ``ROOT/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` and
    ``ROOT/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png`` (mapped to the 19 train ids),
    or ``..._gtFine_labelTrainIds.png`` with ``label_type="labelTrainIds"`` (mmsegmentation's
    converted files). ``return_instances=True`` adds ``..._gtFine_instanceIds.png`` for iIoU.
    """

    name = "cityscapes"
    classes = meta.CITYSCAPES_CLASSES
    palette = np.array(meta.CITYSCAPES_PALETTE, dtype=np.uint8)
    categories = meta.CITYSCAPES_CATEGORIES
    instance_classes = meta.CITYSCAPES_INSTANCE_CLASSES
    train_to_label = meta.CITYSCAPES_TRAIN_TO_LABEL

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        label_type: str = "labelIds",
        return_instances: bool = False,
        seed: int = 0,
        strict: bool = True,
    ):
        if label_type not in ("labelIds", "labelTrainIds"):
            raise DatasetError(
                f"cityscapes: unknown label_type {label_type!r}; choose from "
                "['labelIds', 'labelTrainIds']"
            )
        self.lut = meta.CITYSCAPES_LUT if label_type == "labelIds" else meta.CITYSCAPES_TRAIN_ID_LUT
        root = _require_root(root, self.name)
        layout = "ROOT/leftImg8bit/{split}/{city}/*_leftImg8bit.png"
        images_dir = _require_dir(root / "leftImg8bit" / split, self.name, layout)
        labels_dir = _require_dir(
            root / "gtFine" / split, self.name, "ROOT/gtFine/{split}/{city}/*_gtFine_labelIds.png"
        )

        def companion(image: Path, suffix: str) -> Path:
            stem = image.name[: -len("_leftImg8bit.png")]
            return labels_dir / image.parent.name / f"{stem}_gtFine_{suffix}.png"

        problems: list[str] = []
        items = _pair(
            images_dir.glob("*/*_leftImg8bit.png"),
            lambda image: companion(image, label_type),
            self.name,
            strict,
            problems,
            (lambda image: companion(image, "instanceIds")) if return_instances else None,
            where=f"split {split!r} ({images_dir})",
            labels=labels_dir.glob(f"*/*_gtFine_{label_type}.png"),
            image_for=lambda label: str(
                images_dir
                / label.parent.name
                / f"{label.name[: -len(f'_gtFine_{label_type}.png')]}_leftImg8bit.png"
            ),
        )
        self.return_instances = return_instances
        super().__init__(items, transform, seed, problems)

    def read_instances(self, index: int) -> torch.Tensor:
        path = self.items[index].instances
        if path is None:
            return torch.empty(0, dtype=torch.int64)
        if not path.is_file():
            raise DatasetError(f"cityscapes: no instance map {path} (needed for iIoU)")
        try:
            with Image.open(path) as img:
                return torch.from_numpy(np.asarray(img).astype(np.int64))
        except (OSError, UnidentifiedImageError) as error:
            raise DatasetError(f"{path}: cannot read instance map ({error})") from None


class CamVid(SegmentationDataset):
    """CamVid, SegNet split (367 / 101 / 233 images at 480×360), 11 classes + void.

    Layout: ``ROOT/{split}/NAME.png`` and ``ROOT/{split}annot/NAME.png`` (value 11 = void).
    """

    name = "camvid"
    classes = meta.CAMVID_CLASSES
    palette = np.array(meta.CAMVID_PALETTE, dtype=np.uint8)
    lut = meta.CAMVID_LUT

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        seed: int = 0,
        strict: bool = True,
    ):
        root = _require_root(root, self.name)
        images_dir = _require_dir(root / split, self.name, "ROOT/{split}/*.png")
        labels_dir = _require_dir(root / f"{split}annot", self.name, "ROOT/{split}annot/*.png")
        items, problems = _stem_pairs(self.name, images_dir, labels_dir, split, strict)
        super().__init__(items, transform, seed, problems)


class PascalContext(SegmentationDataset):
    """PASCAL-Context (VOC2010), 59 classes (background ignored) or 60.

    Layout (mmsegmentation): ``ROOT/JPEGImages/NAME.jpg``,
    ``ROOT/SegmentationClassContext/NAME.png`` (0 = background, 1–59 = classes) and
    ``ROOT/ImageSets/SegmentationContext/{split}.txt``; ROOT is ``VOCdevkit/VOC2010``.
    """

    name = "pascal_context"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        num_classes: int = 59,
        seed: int = 0,
        strict: bool = True,
    ):
        if num_classes not in (59, 60):
            raise DatasetError(f"pascal_context: num_classes must be 59 or 60, got {num_classes}")
        self.classes = (
            meta.PASCAL_CONTEXT_CLASSES_59 if num_classes == 59 else meta.PASCAL_CONTEXT_CLASSES_60
        )
        self.lut = meta.PASCAL_CONTEXT_59_LUT if num_classes == 59 else meta.PASCAL_CONTEXT_60_LUT
        root = _require_root(root, self.name)
        listing = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(
                f"pascal_context: split file {listing} not found (expected "
                "ROOT/ImageSets/SegmentationContext/{split}.txt)"
            )
        images_dir = _require_dir(root / "JPEGImages", self.name, "ROOT/JPEGImages/*.jpg")
        labels_dir = _require_dir(
            root / "SegmentationClassContext", self.name, "ROOT/SegmentationClassContext/*.png"
        )
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        problems: list[str] = []
        images = []
        for stem in names:
            image = images_dir / f"{stem}.jpg"
            if image.is_file():
                images.append(image)
            elif strict:
                raise DatasetError(f"pascal_context: {listing} lists {stem} but {image} is missing")
            else:
                problems.append(f"pascal_context: {listing} lists {stem} but {image} is missing")
        items = _pair(
            images,
            lambda image: labels_dir / f"{image.stem}.png",
            self.name,
            strict,
            problems,
            where=f"split {split!r} ({listing})",
        )
        super().__init__(items, transform, seed, problems)


class CocoStuff(SegmentationDataset):
    """COCO-Stuff-164k, 171 classes.

    Layout: ``ROOT/images/{train2017,val2017}/NAME.jpg`` and
    ``ROOT/annotations/{train2017,val2017}/NAME_labelTrainIds.png`` (train ids 0–170,
    mmsegmentation's converted files), or the raw ``NAME.png`` stuffthingmaps (COCO id − 1,
    mapped here) with ``label_type="raw"``.
    """

    name = "coco_stuff"
    classes = meta.COCO_STUFF_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        label_type: str = "labelTrainIds",
        seed: int = 0,
        strict: bool = True,
    ):
        if label_type not in ("labelTrainIds", "raw"):
            raise DatasetError(
                f"coco_stuff: unknown label_type {label_type!r}; choose from "
                "['labelTrainIds', 'raw']"
            )
        self.lut = meta.COCO_STUFF_LUT if label_type == "labelTrainIds" else meta.COCO_STUFF_RAW_LUT
        folder = split if split.endswith("2017") else f"{split}2017"
        root = _require_root(root, self.name)
        images_dir = _require_dir(root / "images" / folder, self.name, "ROOT/images/{split}2017")
        labels_dir = _require_dir(
            root / "annotations" / folder, self.name, "ROOT/annotations/{split}2017"
        )
        suffix = "_labelTrainIds.png" if label_type == "labelTrainIds" else ".png"
        problems: list[str] = []
        items = _pair(
            images_dir.glob("*.jpg"),
            lambda image: labels_dir / f"{image.stem}{suffix}",
            self.name,
            strict,
            problems,
            where=f"split {split!r} ({images_dir})",
            # mmsegmentation writes NAME_labelTrainIds.png next to the raw NAME.png
            labels=(
                p
                for p in labels_dir.glob(f"*{suffix}")
                if suffix != ".png" or not p.name.endswith("_labelTrainIds.png")
            ),
            image_for=lambda label: str(images_dir / f"{label.name[: -len(suffix)]}.jpg"),
        )
        super().__init__(items, transform, seed, problems)


class ADE20K(SegmentationDataset):
    """ADE20K (ADEChallengeData2016), 150 classes; label 0 ("other") ignored, others − 1.

    Layout: ``ROOT/images/{training,validation}/NAME.jpg`` and
    ``ROOT/annotations/{training,validation}/NAME.png``; split "train" / "val" accepted.
    """

    name = "ade20k"
    classes = meta.ADE20K_CLASSES
    lut = meta.ADE20K_LUT

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        seed: int = 0,
        strict: bool = True,
    ):
        folder = {"train": "training", "val": "validation"}.get(split, split)
        root = _require_root(root, self.name)
        layout = "ROOT/images/{training,validation}/*.jpg"
        images_dir = _require_dir(root / "images" / folder, self.name, layout)
        labels_dir = _require_dir(
            root / "annotations" / folder, self.name, "ROOT/annotations/{training,validation}"
        )
        items, problems = _stem_pairs(self.name, images_dir, labels_dir, split, strict, ".jpg")
        super().__init__(items, transform, seed, problems)


class Folder(SegmentationDataset):
    """Any dataset in a plain layout.

    ``ROOT/images/{split}/NAME.{png,jpg,jpeg}``, ``ROOT/labels/{split}/NAME.png`` (class index
    per pixel, 255 = ignore) and optionally ``ROOT/classes.txt`` (one class name per line);
    without it, pass ``num_classes``.
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        strict: bool = True,
    ):
        root = _require_root(root, self.name)
        names_file = root / "classes.txt"
        if names_file.is_file():
            classes = tuple(x.strip() for x in names_file.read_text().splitlines() if x.strip())
            if num_classes is not None and num_classes != len(classes):
                raise DatasetError(
                    f"folder: {names_file} names {len(classes)} classes but num_classes is "
                    f"{num_classes}"
                )
        elif num_classes is not None:
            classes = tuple(f"class {i}" for i in range(num_classes))
        else:
            raise DatasetError(
                f"folder: no class list {names_file} and no num_classes; expected one of them"
            )
        if not 1 <= len(classes) <= 255:
            raise DatasetError(f"folder: expected 1–255 classes, got {len(classes)}")
        self.classes = classes
        self.lut = meta.lookup_table({**{i: i for i in range(len(classes))}, 255: 255})
        images_dir = _require_dir(root / "images" / split, self.name, "ROOT/images/{split}/*")
        labels_dir = _require_dir(root / "labels" / split, self.name, "ROOT/labels/{split}/*.png")
        items, problems = _stem_pairs(self.name, images_dir, labels_dir, split, strict)
        super().__init__(items, transform, seed, problems)

    def label_help(self) -> str:
        return f"class ids 0-{self.num_classes - 1} or 255 (ignore)"
