"""Human-facing outputs: metric tables, coloured masks, overlays and comparison grids."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from contextrast.data.datasets import IMAGE_SUFFIXES, SegmentationDataset, read_image
from contextrast.data.transforms import normalize
from contextrast.evaluation.inference import predict_probabilities
from contextrast.models import Segmentor

__all__ = [
    "colorize",
    "comparison_rows",
    "format_metrics",
    "overlay",
    "predict_files",
    "save_grid",
]


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table: summary lines, then per-class IoU."""
    lines = [
        f"images          {metrics['images']}",
        f"pixel accuracy  {metrics['pixel_accuracy'] * 100:6.2f}",
        f"mIoU            {metrics['miou'] * 100:6.2f}",
    ]
    for width, value in metrics.get("boundary_miou", {}).items():
        lines.append(f"B-mIoU {width:>3} px   {value * 100:6.2f}")
    for key, title in (
        ("iiou", "iIoU"),
        ("category_miou", "category mIoU"),
        ("category_iiou", "category iIoU"),
    ):
        if key in metrics:
            lines.append(f"{title:<16}{metrics[key] * 100:6.2f}")
    for third, value in metrics.get("frequency_miou", {}).items():  # by training pixels
        shown = "   n/a" if value is None or value != value else f"{value * 100:6.2f}"
        lines.append(f"{third + ' mIoU':<16}{shown}")
    for size, value in metrics.get("size_miou", {}).items():  # by ground-truth object area
        shown = "   n/a" if value is None or value != value else f"{value * 100:6.2f}"
        lines.append(f"{size + ' objects':<16}{shown}")
    lines.append("")
    lines.append(f"{'class':<24}{'IoU':>8}")
    for name, value in metrics["iou"].items():
        shown = "     n/a" if value != value else f"{value * 100:8.2f}"
        lines.append(f"{name:<24}{shown}")
    return "\n".join(lines)


def colorize(
    pred: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """pred: (H, W) class ids -> (H, W, 3) uint8; ignore is black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[ignore_index] = 0
    return table[pred.astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image, mask_rgb: (H, W, 3) uint8 -> blend."""
    return (image * (1 - alpha) + mask_rgb * alpha).round().astype(np.uint8)


def _inputs(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(paths)}")
    # An image given twice (also as another spelling of its path) is segmented once.
    first: dict[Path, Path] = {}
    for path in files:
        first.setdefault(path.resolve(), path)
    unique = list(first.values())
    by_stem: dict[str, Path] = {}
    for path in unique:  # outputs are named by stem: two inputs must not share one
        other = by_stem.setdefault(path.stem, path)
        if other != path:
            raise ValueError(
                f"inputs {other} and {path} would both be written as {path.stem}_mask.png; "
                "rename one, or predict them into different --out folders"
            )
    return unique


@torch.no_grad()
def predict_files(
    model: Segmentor,
    palette: Sequence[Sequence[int]],
    inputs: Sequence[str],
    out_dir: Path,
    mean: Sequence[float],
    std: Sequence[float],
    **protocol: Any,
) -> list[Path]:
    """Segment each image; write NAME_mask.png (palette colours) and NAME_overlay.png.

    Args:
        mean, std: the model's input normalisation.
        **protocol: keyword arguments of ``predict_probabilities`` (mode, crop, stride,
            scales, flip).

    Returns the mask paths.
    """
    files = _inputs(inputs)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; expected a folder for the masks")
    out_dir.mkdir(parents=True, exist_ok=True)
    forward = model.inference()
    written = []
    for path in files:
        image = read_image(path)  # (3, H, W) uint8
        batch = normalize(image, mean, std)[None]
        pred = predict_probabilities(forward, batch, **protocol).argmax(1)[0].numpy()
        mask = colorize(pred, palette)
        mask_path = out_dir / f"{path.stem}_mask.png"
        Image.fromarray(mask).save(mask_path)
        rgb = image.permute(1, 2, 0).numpy()
        Image.fromarray(overlay(rgb, mask)).save(out_dir / f"{path.stem}_overlay.png")
        written.append(mask_path)
    return written


def save_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: Path,
    scale: int = 2,
    titles: Sequence[str] = (),
    legend: Sequence[tuple[str, Sequence[int]]] = (),
) -> Path:
    """rows of equally sized (H, W, 3) uint8 panels -> one PNG, 2-px white gutters.

    titles: one per column, written above it; legend: (class name, RGB colour) pairs, drawn
    as swatches below the panels, so that the picture reads without the printed text.
    """
    gutter = 2
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    canvas = np.full(
        (len(rows) * (height + gutter) - gutter, columns * (width + gutter) - gutter, 3),
        255,
        dtype=np.uint8,
    )
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            top, left = r * (height + gutter), c * (width + gutter)
            canvas[top : top + height, left : left + width] = panel
    image = Image.fromarray(canvas)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    if titles or legend:
        image = _annotate(image, (width + gutter) * scale, titles, legend)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return (
        "".join(c for c in folded if not unicodedata.combining(c))
        .encode("ascii", "replace")
        .decode()
    )


def _annotate(
    panels: Image.Image,
    column: int,
    titles: Sequence[str],
    legend: Sequence[tuple[str, Sequence[int]]],
) -> Image.Image:
    """panels with a title band above (one title per ``column`` pixels) and legend rows
    below (a swatch and a name per class, wrapped to the picture's width)."""
    font = ImageFont.load_default(size=14)
    # Pillow's built-in font has ASCII glyphs only: "Lovász" is drawn as "Lovasz".
    titles = [_ascii(t) for t in titles]
    legend = [(_ascii(name), colour) for name, colour in legend]
    line = 20
    swatch, spacing = 12, 8
    entries = []  # (row, x) of each legend entry, wrapped to the width
    row, x = 0, 4
    measure = ImageDraw.Draw(panels)
    for name, _ in legend:
        width = swatch + 4 + round(measure.textlength(name, font=font)) + spacing
        if x + width > panels.width and x > 4:
            row, x = row + 1, 4
        entries.append((row, x))
        x += width
    top = line if titles else 0
    bottom = (row + 1) * line + 4 if legend else 0
    out = Image.new("RGB", (panels.width, top + panels.height + bottom), "white")
    out.paste(panels, (0, top))
    draw = ImageDraw.Draw(out)
    for c, title in enumerate(titles):
        centre = c * column + column // 2
        while len(title) > 1 and draw.textlength(title, font=font) > column - 4:
            title = title[: -4 if title.endswith("...") else -1].rstrip() + "..."
        draw.text((centre, line // 2), title, fill="black", font=font, anchor="mm")
    base = top + panels.height + 4
    for (name, colour), (r, x) in zip(legend, entries):
        y = base + r * line
        draw.rectangle((x, y + 2, x + swatch, y + 2 + swatch), fill=tuple(colour), outline="black")
        draw.text((x + swatch + 4, y + 1), name, fill="black", font=font)
    return out


@torch.no_grad()
def comparison_rows(
    models: Sequence[tuple[Segmentor, Sequence[Sequence[int]], dict[str, Any]]],
    dataset: SegmentationDataset,
    indices: Sequence[int],
) -> list[list[np.ndarray]]:
    """Panels for :func:`save_grid`: per image, the image, its ground truth and each model's
    prediction (Fig. 4).

    Args:
        models: (model, palette, keyword arguments of ``predict_probabilities`` such as
            ``mode``, ``crop``, ``stride``) per column.
        dataset: the split (its transform normalises; ``read`` gives the raw image).
        indices: the images, one row each.
    """
    rows = []
    for index in indices:
        sample = dataset[index]
        image, _ = dataset.read(index)
        row = [image.permute(1, 2, 0).numpy(), colorize(sample.label.numpy(), models[0][1])]
        for model, palette, options in models:
            probabilities = predict_probabilities(model.inference(), sample.image[None], **options)
            row.append(colorize(probabilities.argmax(1)[0].numpy(), palette))
        rows.append(row)
    return rows
