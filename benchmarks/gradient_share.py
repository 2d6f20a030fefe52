"""How much of the encoder's update the contrastive term drives, in a trained run: CE's and
the term's gradients on the encoder's parameters, their norms, ratio and cosine.

    python benchmarks/gradient_share.py runs/bench_inia19/contextrast_s0_15b5a9a3eb \\
        --batches 4 --out benchmarks/results/gradient_share.json

Each run folder holds the ``config.yaml`` and ``last.pt`` that ``contextrast train`` wrote;
its training split is read with the run's own augmentation, ``--batches`` batches of the
run's batch size in a fixed order (``--seed``). The term's value and gradient are the
weighted ones the run trained with (α included), at the checkpoint's step. Why: under SGD the
encoder moves along the sum of the two gradients, under AdamW along its per-parameter
normalisation; when the term's share dominates once CE is fit, the encoder follows the term,
not CE (docs/benchmarks.md, issue 28).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import check_out, write_result
from torch import nn
from torch.utils.data import DataLoader

from contextrast.config import ConfigError, config_from_dict
from contextrast.engine.builders import build_contrast, build_model, build_split
from contextrast.utils.checkpoint import load_checkpoint


def norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def encoder_gradients(
    model: nn.Module,
    contrast: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    step: int | None = None,
) -> dict[str, float | None]:
    """CE's and the contrastive term's gradients on ``model.encoder``'s parameters, one batch.

    images: (B, 3, H, W); target: (B, H, W) class ids, ``ignore_index`` unlabelled. Returns
    the two loss values, the two gradients' norms, ``ratio`` (the term's norm over CE's) and
    ``cosine`` between them; ``ratio`` and ``cosine`` are None where a norm is 0.
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    out = model(images)
    logits = F.interpolate(out.logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    timed = {} if step is None else {"step": step}
    term = contrast(out.features, out.logits, target, **timed)
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    g_term = torch.autograd.grad(term, params, allow_unused=True)
    pairs = [
        (a if a is not None else torch.zeros_like(p), b if b is not None else torch.zeros_like(p))
        for p, a, b in zip(params, g_ce, g_term)
    ]
    n_ce, n_term = norm([a for a, _ in pairs]), norm([b for _, b in pairs])
    dot = sum(float((a.double() * b.double()).sum()) for a, b in pairs)
    both = n_ce > 0 and n_term > 0
    return {
        "ce": float(ce.detach()),
        "term": float(term.detach()),
        "grad_ce": n_ce,
        "grad_term": n_term,
        "ratio": n_term / n_ce if n_ce > 0 else None,
        "cosine": dot / (n_ce * n_term) if both else None,
    }


def load_run(folder: Path):
    """The run's config, model and contrastive term with their trained weights, and its step;
    a one-line exit naming the folder where it is not a trained contrastive run."""
    try:
        state = load_checkpoint(folder / "last.pt")
        config = config_from_dict(state["config"])
    except (OSError, ValueError, ConfigError) as error:
        raise SystemExit(f"{folder}: {error}") from None
    if not state.get("contrast"):
        raise SystemExit(f"{folder}: a run without a trained contrastive term (loss.name: ce)")
    data = build_split(config, config.data.train_split, train=True)
    model = build_model(config, data.num_classes, pretrained=False)
    model.load_state_dict(state["model"])
    contrast = build_contrast(config, data.num_classes, model.feature_channels)
    contrast.load_state_dict(state["contrast"])
    return config, data, model.train(), contrast.train(), int(state.get("iteration", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.batches < 1:
        raise SystemExit(f"--batches {args.batches}: must be at least 1")
    if args.out:
        check_out(args.out)
    torch.set_num_threads(args.threads)
    rows = []
    for folder in args.runs:
        config, data, model, contrast, step = load_run(folder)
        torch.manual_seed(args.seed)
        batches = DataLoader(data, batch_size=config.data.batch_size, shuffle=True)
        for i, batch in zip(range(args.batches), batches):
            row = encoder_gradients(model, contrast, batch[0], batch[1], data.ignore_index, step)
            rows.append({"run": folder.name, "batch": i, "step": step, **row})
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
            cosine = "n/a" if row["cosine"] is None else f"{row['cosine']:+.3f}"
            print(
                f"{folder.name} batch {i}: CE {row['ce']:.4f}, term {row['term']:.4f}; "
                f"|grad| CE {row['grad_ce']:.4f}, term {row['grad_term']:.4f}; "
                f"ratio {ratio}, cosine {cosine}"
            )
    if args.out:
        write_result(args.out, "gradient_share", rows, batches=args.batches, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
