"""Independent brute-force references (NumPy / SciPy loops) for the tests.

Written from the paper's equations, not from the library: plain loops over classes and
pixels, float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def nearest(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, H, W) -> (B, h, w) with source pixel (floor(y·H/h), floor(x·W/w))."""
    _, big_h, big_w = labels.shape
    rows = [(y * big_h) // h for y in range(h)]
    cols = [(x * big_w) // w for x in range(w)]
    return labels[:, rows][:, :, cols]


def anchors(embeddings: np.ndarray, labels: np.ndarray, n: int, ignore: int = 255):
    """embeddings (B, D, H, W), labels (B, H, W) -> anchors (N, D), present (N,)."""
    d = embeddings.shape[1]
    out = np.zeros((n, d))
    present = np.zeros(n, dtype=bool)
    pixels = embeddings.transpose(0, 2, 3, 1)
    for c in range(n):
        members = pixels[labels == c]
        if len(members):
            out[c] = members.mean(axis=0)
            present[c] = True
    return out, present


def pixel_anchor_loss(
    anchors,
    embeddings,
    labels,
    tau,
    negative_mask=None,
    ignore=255,
    positive_mask=None,
    extra_mask=None,
):
    """Eq. 3–4 with a loop over anchors and positives; mean over anchors that qualify.

    positive_mask (N, M) restricts each anchor's positives; extra_mask (N, M) lists pixels
    of other classes added to its negatives once more (the ``add`` reading)."""
    per_anchor = []
    for a in range(anchors.shape[0]):
        positives = [
            m
            for m in range(len(labels))
            if labels[m] == a and (positive_mask is None or positive_mask[a, m])
        ]
        negatives = [
            m
            for m in range(len(labels))
            if labels[m] != a
            and labels[m] != ignore
            and (negative_mask is None or negative_mask[a, m])
        ]
        if extra_mask is not None:
            negatives += [
                m
                for m in range(len(labels))
                if labels[m] != a and labels[m] != ignore and extra_mask[a, m]
            ]
        if not positives or not negatives:
            continue
        neg_terms = [math.exp(anchors[a] @ embeddings[m] / tau) for m in negatives]
        terms = []
        for p in positives:
            pos = math.exp(anchors[a] @ embeddings[p] / tau)
            terms.append(-math.log(pos / (pos + sum(neg_terms))))
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def edt(mask: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> distance to the nearest False per 2-D map; inf for all-True maps."""
    flat = mask.reshape(-1, *mask.shape[-2:])
    out = np.zeros(flat.shape)
    for k, m in enumerate(flat):
        out[k] = ndimage.distance_transform_edt(m) if (~m).any() else np.where(m, np.inf, 0)
    return out.reshape(mask.shape)


def ceil_ratio(ratio: float, count: int) -> int:
    from fractions import Fraction

    return math.ceil(Fraction(ratio).limit_denominator(10**6) * count)


def supcon(
    features, labels, tau, base_tau, contrast=None, contrast_labels=None, queue=None,
    queue_labels=None,
):  # fmt: skip
    """Supervised contrast with a loop: per anchor, mean over positives of
    −log(e^{s+} / (e^{s+} + Σ_neg e^{s−})), times τ / τ_base; mean over anchors that have both.
    Without ``contrast`` the anchors contrast with themselves (and the ``queue`` after them),
    each anchor excluded as its own positive."""
    self_contrast = contrast is None
    if self_contrast:
        contrast, contrast_labels = list(features), list(labels)
        if queue is not None:
            contrast, contrast_labels = contrast + list(queue), contrast_labels + list(queue_labels)
    per_anchor = []
    for i in range(len(features)):
        positives = [
            j
            for j in range(len(contrast))
            if contrast_labels[j] == labels[i] and not (self_contrast and j == i)
        ]
        negatives = [j for j in range(len(contrast)) if contrast_labels[j] != labels[i]]
        if not positives or not negatives:
            continue
        neg = sum(math.exp(features[i] @ contrast[j] / tau) for j in negatives)
        terms = []
        for p in positives:
            pos = math.exp(features[i] @ contrast[p] / tau)
            terms.append(-math.log(pos / (pos + neg)))
        per_anchor.append(sum(terms) / len(terms))
    return (sum(per_anchor) / len(per_anchor)) * tau / base_tau if per_anchor else 0.0
