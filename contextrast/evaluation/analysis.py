"""The paper's analyses as functions: feature metrics (Table 5) and the error-edge
similarity curve (Fig. 5). The CLI (``contextrast analyze``) wires them to checkpoints."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from contextrast import functional as CF
from contextrast.contrast.losses import ContextrastLoss
from contextrast.functional import resize_labels
from contextrast.functional.fusion import adaptive_fuse
from contextrast.models import Segmentor

__all__ = [
    "boundary_similarity",
    "collect_head_inputs",
    "head_input",
    "plot_curves",
    "similarity_by_distance",
    "write_curves",
]


def pad_pair(
    images: torch.Tensor, labels: torch.Tensor, divisor: int = 32, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad images (zeros: the mean colour) and labels (ignore) at the bottom and right to a
    multiple of ``divisor``, which HRNet-style encoders need. (B, 3, H, W), (B, H, W)."""
    height, width = labels.shape[-2:]
    pad = (0, (-width) % divisor, 0, (-height) % divisor)
    if pad[1] == 0 and pad[3] == 0:
        return images, labels
    return F.pad(images, pad), F.pad(labels, pad, value=ignore_index)


@torch.no_grad()
def head_input(model: Segmentor, images: torch.Tensor) -> torch.Tensor:
    """The representation "just before the segmentation head": the input of the decode
    head's final classifier. images: (B, 3, H, W) -> (B, C, h, w)."""
    captured: list[torch.Tensor] = []
    hook = model.decode_head.classifier.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0])
    )
    try:
        model(images)
    finally:
        hook.remove()
    return captured[-1]


@torch.no_grad()
def collect_head_inputs(
    model: Segmentor,
    dataset: Dataset,
    per_class: int = 1000,
    max_images: int | None = None,
    ignore_index: int = 255,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bounded, class-balanced sample of head inputs: at most ``per_class`` random pixels
    per class over the images (labels resized by nearest neighbour).

    Returns (embeddings (M, C) float32 on the CPU, labels (M,)).
    """
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    kept: dict[int, list[torch.Tensor]] = {}
    counts: dict[int, int] = {}
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    model.eval()
    for index in range(count):
        sample = dataset[index]
        images, labels = pad_pair(sample.image[None], sample.label[None], ignore_index=ignore_index)
        features = head_input(model, images.to(device))[0].float().cpu()  # (C, h, w)
        labels = resize_labels(labels, tuple(features.shape[-2:]))[0].flatten()
        flat = features.flatten(1)  # (C, P)
        for c in torch.unique(labels).tolist():
            if c == ignore_index or counts.get(c, 0) >= per_class:
                continue
            members = torch.nonzero(labels == c).squeeze(1)
            take = min(per_class - counts.get(c, 0), members.numel())
            chosen = members[torch.randperm(members.numel(), generator=g)[:take]]
            kept.setdefault(c, []).append(flat[:, chosen].t())
            counts[c] = counts.get(c, 0) + take
    if not kept:
        raise ValueError("no labelled pixel in the images analysed")
    classes = sorted(kept)
    embeddings = torch.cat([torch.cat(kept[c]) for c in classes])
    labels = torch.cat([torch.full((counts[c],), c) for c in classes])
    return embeddings, labels


def similarity_by_distance(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    anchors: torch.Tensor,
    max_distance: int = 10,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 5 statistics of one layer: cosine similarity between each error pixel and the
    representative anchor of its true class, summed per distance to the error-region edge.

    Args:
        embeddings: (B, D, h, w) pixel embeddings.
        labels: (B, h, w) ground truth; pred: (B, h, w) predictions.
        anchors: (N, D) the layer's (fused) anchors.
        max_distance: distances are binned as ⌈d⌉ into 1 … max_distance (farther pixels
            go to the last bin).

    Returns:
        (similarity sums (K,), pixel counts (K,)) for distances 1 … K.
    """
    num_classes = anchors.shape[0]
    errors = CF.class_error_maps(pred, labels, num_classes, ignore_index)  # (B, N, h, w)
    distance = CF.distance_transform(errors)
    inside = errors.any(dim=1)  # (B, h, w): each pixel has one GT class
    pixel_distance = torch.where(errors, distance, torch.zeros_like(distance)).amax(dim=1)
    cosine = torch.einsum(
        "bdhw,bdhw->bhw",
        F.normalize(embeddings.float(), dim=1),
        F.normalize(anchors.float(), dim=1)[labels.clamp(max=num_classes - 1)].permute(0, 3, 1, 2),
    )  # (B, h, w)
    finite = torch.isfinite(pixel_distance)
    bins = pixel_distance.clamp(max=max_distance).ceil().long().clamp(min=1)  # (B, h, w)
    use = inside & finite
    sums = torch.zeros(max_distance, dtype=torch.float64)
    counts = torch.zeros(max_distance, dtype=torch.long)
    sums.index_add_(0, bins[use].cpu() - 1, cosine[use].double().cpu())
    counts.index_add_(0, bins[use].cpu() - 1, torch.ones_like(bins[use].cpu()))
    return sums, counts


@torch.no_grad()
def boundary_similarity(
    model: Segmentor,
    contrast: ContextrastLoss,
    dataset: Dataset,
    max_distance: int = 10,
    max_images: int | None = None,
) -> list[dict[str, list[float]]]:
    """Fig. 5 over a dataset: per layer, the mean cosine similarity between error pixels and
    their true class's fused anchor (anchors of each image, as in training), by distance.

    Returns one dict per layer: {"distance": [1 … K], "similarity": [...], "pixels": [...]}.
    """
    if not (isinstance(max_distance, int) and max_distance >= 1):
        raise ValueError(f"max_distance must be an int >= 1, got {max_distance!r}")
    device = next(model.parameters()).device
    model.eval()
    contrast.eval()
    layers = len(contrast.heads)
    sums = [torch.zeros(max_distance, dtype=torch.float64) for _ in range(layers)]
    counts = [torch.zeros(max_distance, dtype=torch.long) for _ in range(layers)]
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    for index in range(count):
        sample = dataset[index]
        images, target = pad_pair(sample.image[None], sample.label[None])
        out = model(images.to(device))
        target = target.to(device)
        pred = out.logits.argmax(1)
        embeddings = [head(f) for head, f in zip(contrast.heads, out.features)]
        anchors, present = [], []
        for e in embeddings:
            labels = resize_labels(target, tuple(e.shape[-2:]))
            a, p = CF.representative_anchors(e, labels, contrast.num_classes, contrast.ignore_index)
            anchors.append(a)
            present.append(p)
        # The anchors exactly as the loss fuses (and normalises) them.
        if contrast.fusion is None:
            fused_anchors = CF.batched.fuse_anchors(
                anchors, present[-1], contrast.w_high, contrast.normalize_anchors
            )
        else:  # Contextrast++'s learned fusion (N_i ∩ N_I from the presence per layer)
            held = torch.stack(present, dim=1).long()  # (N, I)
            residual = contrast.w_high if contrast.anchor_fusion == "residual" else None
            fused_anchors = adaptive_fuse(
                torch.stack(anchors),
                held,
                contrast.fusion.weights(),
                contrast.normalize_anchors,
                residual,
            )
        for i, (e, fused) in enumerate(zip(embeddings, fused_anchors)):
            size = tuple(e.shape[-2:])
            s, c = similarity_by_distance(
                e, resize_labels(target, size), resize_labels(pred, size), fused, max_distance
            )
            sums[i] += s
            counts[i] += c
    return [
        {
            "distance": list(range(1, max_distance + 1)),
            "similarity": [
                float(s / c) if int(c) else math.nan for s, c in zip(sums[i], counts[i])
            ],
            "pixels": counts[i].tolist(),
        }
        for i in range(layers)
    ]


def plot_curves(curves: Sequence[dict[str, list[float]]], path, title: str) -> None:
    """One line per layer, cosine similarity against distance; PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib, which is not installed (pip install "
            "'contextrast[analysis]')"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=120)
    for i, curve in enumerate(curves, start=1):
        axis.plot(curve["distance"], curve["similarity"], marker="o", label=f"layer {i}")
    axis.set_xlabel("distance to the error-region edge (px, layer resolution)")
    axis.set_ylabel("cosine similarity to own-class anchor")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_curves(curves: list[dict[str, list[float]]], path: Path) -> Path:
    """The curves of :func:`boundary_similarity` as CSV: layer, distance, similarity, pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "distance", "similarity", "pixels"])
        for layer, curve in enumerate(curves, start=1):
            for d, sim, n in zip(curve["distance"], curve["similarity"], curve["pixels"]):
                writer.writerow([layer, d, f"{sim:.6f}", n])
    return path
