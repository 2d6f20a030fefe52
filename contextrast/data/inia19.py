"""A real-image segmentation benchmark built from the INIA19 macaque MRI template and atlas.

Debian's ``mricron-data`` package ships the INIA19 rhesus-macaque T1 template
(``inia19-t1-brain.nii.gz``: real MRI, 0.5 mm, 168×206×128, skull-stripped) and its NeuroMaps
atlas (``inia19-NeuroMaps.nii.gz``: 724 labels, region n and 1000 + n are its two
hemispheres). :func:`prepare_inia19` cuts them into 2-D slices in the ``folder`` layout:

- labels: 0 "background" (outside the brain), 1 … R the R largest regions of the atlas by
  volume (hemispheres folded), R + 1 "other" (every other labelled region), 255 (ignore) on
  brain voxels that the atlas leaves unlabelled;
- one folder per orientation (``sagittal``, ``coronal``, ``axial``), slices shown in the
  radiological way (superior / anterior up);
- train and val split by slabs: consecutive blocks of ``slab`` slices alternate between the
  splits (every ``val_every``-th block is val) and the ``gap`` slices on each side of a
  boundary between splits are dropped, so no slice has a direct neighbour in the other split.

Credit: INIA19 (Rohlfing et al., *The INIA19 template and NeuroMaps atlas for primate brain
image parcellation and spatial normalization*, Front. Neuroinform. 2012) and NeuroMaps
(Dubach & Bowden). The data files come from Debian's ``mricron-data`` (BSD-3-clause there).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from contextrast.data.datasets import Folder

__all__ = [
    "BUILTIN_ROOT",
    "DEFAULT_SOURCE",
    "ORIENTATIONS",
    "Inia19",
    "Inia19Split",
    "fold_hemispheres",
    "inia19_classes",
    "prepare_inia19",
    "slab_split",
]

DEFAULT_SOURCE = Path("/usr/share/mricron/templates")
T1_FILE = "inia19-t1-brain.nii.gz"
ATLAS_FILE = "inia19-NeuroMaps.nii.gz"
#: orientation → the volume axis that is fixed in a slice (RAS volume: x, y, z)
ORIENTATIONS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: the coronal slices that ship inside the package (what ``prepare_inia19`` writes)
BUILTIN_ROOT = Path(__file__).resolve().parent / "inia19_coronal"
HEMISPHERE_OFFSET = 1000
IGNORE = 255
SPLITS = ("train", "val")
CREDIT = (
    "Derived from the INIA19 rhesus-macaque T1 template and NeuroMaps atlas\n"
    "(Rohlfing T., Kroenke C.D., Sullivan E.V., Dubach M.F., Bowden D.M., Grant K.A.,\n"
    "Pfefferbaum A. The INIA19 template and NeuroMaps atlas for primate brain image\n"
    "parcellation and spatial normalization. Front. Neuroinform. 6:27, 2012), as shipped in\n"
    "Debian's mricron-data package (BSD-3-clause in its copyright file).\n"
)


def fold_hemispheres(atlas: np.ndarray) -> np.ndarray:
    """Map the right-hemisphere labels 1000 + n onto n (the same region); 0 stays 0."""
    return np.where(atlas >= HEMISPHERE_OFFSET, atlas - HEMISPHERE_OFFSET, atlas)


def inia19_classes(folded: np.ndarray, num_regions: int) -> tuple[list[int], np.ndarray]:
    """The ``num_regions`` largest atlas regions and the class map of the whole volume.

    folded: (X, Y, Z) integer atlas with hemispheres folded, 0 = unlabelled.

    Returns the region ids (largest first, ties by id) and an (X, Y, Z) uint8 class map before
    the background/ignore split: 0 unlabelled, 1 … R the regions, R + 1 every other region.
    """
    ids, counts = np.unique(folded[folded > 0], return_counts=True)
    if len(ids) <= num_regions:
        raise ValueError(
            f"the atlas has {len(ids)} labelled regions; num_regions must be below that, got "
            f"{num_regions}"
        )
    order = np.lexsort((ids, -counts))  # by count descending, then id
    regions = [int(x) for x in ids[order[:num_regions]]]
    lut = np.full(int(folded.max()) + 1, num_regions + 1, dtype=np.uint8)
    lut[0] = 0
    for k, region in enumerate(regions, start=1):
        lut[region] = k
    return regions, lut[folded]


def slab_split(indices: Sequence[int], slab: int, val_every: int, gap: int) -> dict[str, list]:
    """Split slice positions into train / val by slabs, dropping ``gap`` slices at each seam.

    Block b = position // slab is val when b % val_every == val_every // 2, train otherwise.
    A slice is dropped when a slice of the other split lies within ``gap`` positions of it.
    """
    if slab < 1 or val_every < 2 or gap < 1:
        raise ValueError(
            f"slab must be >= 1, val_every >= 2 and gap >= 1, got {slab}, {val_every}, {gap}"
        )
    side = {i: "val" if (i // slab) % val_every == val_every // 2 else "train" for i in indices}
    out: dict[str, list] = {"train": [], "val": []}
    for i in indices:
        near = (side.get(j) for j in range(i - gap, i + gap + 1) if j != i)
        if all(s in (None, side[i]) for s in near):
            out[side[i]].append(i)
    return out


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice, superior (sagittal, coronal) or anterior (axial) at the top."""
    plane = np.take(volume, index, axis=axis)  # two remaining axes in x, y, z order
    return np.ascontiguousarray(plane.T[::-1])  # (rows: last axis reversed, cols: first)


@dataclass
class Inia19Split:
    """What :func:`prepare_inia19` wrote for one orientation.

    removed: slices of an earlier build (other options) that this build does not list;
    foreign: files in the split folders that prepare did not write (kept, and read by the
    ``folder`` dataset like any other file).
    """

    orientation: str
    train: int
    val: int
    removed: int = 0
    foreign: list[Path] = field(default_factory=list)


def _check_out(out: Path, orientations: Sequence[str]) -> None:
    """A one-line error when a folder prepare writes into is an existing file."""
    folders = [*reversed(out.parents), out]
    for orientation in orientations:
        root = out / orientation
        folders += [root, root / "images", root / "labels"]
        folders += [root / kind / split for kind in ("images", "labels") for split in SPLITS]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"output folder {out}: {folder} is a file, not a folder")


def _read_volume(nibabel, path: Path) -> np.ndarray:
    """A NIfTI volume's voxels, or a one-line ``ValueError`` naming a file that is truncated
    or not NIfTI."""
    try:
        return np.asarray(nibabel.load(path).dataobj)
    except (
        EOFError,
        OSError,
        ValueError,
        zlib.error,
        nibabel.filebasedimages.ImageFileError,
    ) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path}: not a readable NIfTI volume ({reason}); download or copy it again"
        ) from None


def prepare_inia19(
    out: str | Path,
    source: str | Path = DEFAULT_SOURCE,
    orientations: Sequence[str] = tuple(ORIENTATIONS),
    num_regions: int = 8,
    min_brain: float = 0.05,
    slab: int = 10,
    val_every: int = 3,
    gap: int = 2,
) -> list[Inia19Split]:
    """Write ``OUT/<orientation>/{images,labels}/{train,val}/*.png`` and ``classes.txt``.

    A re-run into the same folder leaves exactly the slices it lists: the slice files of an
    earlier build (``<orientation>_NNN.png`` in those split folders) that this one does not
    write are removed; any other file is kept and reported in ``Inia19Split.foreign``.

    Args:
        out: output folder (one ``folder``-layout dataset per orientation below it).
        source: folder holding ``inia19-t1-brain.nii.gz`` and ``inia19-NeuroMaps.nii.gz``.
        orientations: any of ``sagittal``, ``coronal``, ``axial``.
        num_regions: R, the largest regions kept as classes (N = R + 2 classes).
        min_brain: slices whose brain covers less than this share of the slice are skipped.
        slab, val_every, gap: see :func:`slab_split`.
    """
    unknown = sorted(set(orientations) - set(ORIENTATIONS))
    if unknown:
        raise ValueError(f"unknown orientation {unknown[0]!r}; choose from {list(ORIENTATIONS)}")
    out = Path(out)
    _check_out(out, orientations)  # before the seconds of reading the volumes
    t1, atlas = _read_volumes(Path(source))
    brain = (t1 > 0) | (atlas > 0)
    regions, classes = inia19_classes(fold_hemispheres(atlas.astype(np.int64)), num_regions)
    # Outside the brain is a class; brain voxels the atlas leaves unlabelled are ignored.
    labels = np.where(brain & (classes == 0), IGNORE, classes).astype(np.uint8)
    scale = float(np.percentile(t1[brain], 99.5))
    image = np.clip(t1 / scale * 255.0, 0, 255).round().astype(np.uint8)
    names = ["background", *(f"region {r}" for r in regions), "other"]
    summary = []
    for orientation in orientations:
        axis = ORIENTATIONS[orientation]
        keep = [
            i
            for i in range(t1.shape[axis])
            if _slice(brain, axis, i).mean() >= min_brain
        ]  # fmt: skip
        splits = slab_split(keep, slab, val_every, gap)
        root = out / orientation
        removed, foreign = _write_slices(root, orientation, axis, splits, image, labels)
        (root / "classes.txt").write_text("\n".join(names) + "\n")
        (root / "CREDIT.txt").write_text(CREDIT)
        meta = {
            "orientation": orientation,
            "axis": axis,
            "regions": regions,
            "classes": names,
            "slices": {k: v for k, v in splits.items()},
            "min_brain": min_brain,
            "slab": slab,
            "val_every": val_every,
            "gap": gap,
        }
        (root / "split.json").write_text(json.dumps(meta, indent=1) + "\n")
        summary.append(
            Inia19Split(orientation, len(splits["train"]), len(splits["val"]), removed, foreign)
        )
    return summary


def _read_volumes(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """The T1 volume (float32) and the atlas of ``source``, of one shape, or one line."""
    try:
        import nibabel
    except ImportError:
        raise RuntimeError(
            "reading the INIA19 volumes needs nibabel: pip install nibabel "
            "(or pip install 'contextrast[bench]')"
        ) from None
    paths = [source / T1_FILE, source / ATLAS_FILE]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; it ships in Debian's mricron-data package "
                "(apt-get install mricron-data) or pass --source DIR"
            )
    t1 = _read_volume(nibabel, paths[0]).astype(np.float32)
    atlas = _read_volume(nibabel, paths[1])
    if t1.shape != atlas.shape:
        raise ValueError(f"{paths[0]} is {t1.shape} but {paths[1]} is {atlas.shape}")
    return t1, atlas


def _write_slices(
    root: Path,
    orientation: str,
    axis: int,
    splits: dict[str, list[int]],
    image: np.ndarray,
    labels: np.ndarray,
) -> tuple[int, list[Path]]:
    """Each split's slices as ``ROOT/{images,labels}/SPLIT/<orientation>_NNN.png``; an
    earlier build's slices that this one does not write are removed. Returns (removed,
    the other files found there)."""
    owned = re.compile(rf"{orientation}_\d{{3,}}\.png")  # the names prepare writes
    removed, foreign = 0, []
    for split, indices in splits.items():
        for kind in ("images", "labels"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        written = {f"{orientation}_{i:03d}.png" for i in indices}
        for i in indices:
            name = f"{orientation}_{i:03d}.png"
            Image.fromarray(_slice(image, axis, i), mode="L").save(root / "images" / split / name)
            Image.fromarray(_slice(labels, axis, i), mode="L").save(root / "labels" / split / name)
        for kind in ("images", "labels"):
            for path in sorted((root / kind / split).iterdir()):
                if path.name in written:
                    continue
                if owned.fullmatch(path.name) and path.is_file():
                    path.unlink()  # a slice of an earlier build with other options
                    removed += 1
                else:
                    foreign.append(path)
    return removed, foreign


class Inia19(Folder):
    """The built-in ``inia19`` set: the coronal slices of :func:`prepare_inia19` (defaults),
    shipped inside the package (about 1 MB): 78 train / 25 val slices, 10 classes.

    The sagittal and axial slices are built by ``contextrast prepare inia19`` and read with
    the ``folder`` layout.
    """

    name = "inia19"
    builtin = True

    def __init__(self, split: str = "train", transform=None, seed: int = 0, strict: bool = True):
        super().__init__(BUILTIN_ROOT, split, transform, seed=seed, strict=strict)
