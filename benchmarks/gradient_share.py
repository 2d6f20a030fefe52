"""How much of the encoder's update the contrastive term drives, in a trained run: the
gradients of the rest of the run's loss (CE, with its auxiliary CE and region term where it
has them) and of the contrastive term on the encoder's parameters, their norms, ratio and
cosine.

    python benchmarks/gradient_share.py runs/bench_inia19/contextrast_s0_15b5a9a3eb \\
        --batches 4 --out benchmarks/results/gradient_share.json

Each run folder holds the ``config.yaml`` and ``last.pt`` that ``contextrast train`` wrote;
its training split is read with the run's own augmentation, ``--batches`` batches of the
run's batch size in a fixed order (``--seed``). The term is weighted as the run's next step
would weight it (α, its schedule at the checkpoint's step, ``loss.contrast_warmup_iters``).
Why: the two gradients' sizes and angle say which one the encoder's update follows (SGD adds
momentum and weight decay to their sum, AdamW normalises it per parameter); issue 28 in
docs/benchmarks.md. Every folder is loaded before the first is measured.
"""

from __future__ import annotations

import argparse
import inspect
import math
from pathlib import Path
from typing import NamedTuple

import torch
from results_io import check_out, write_result
from torch import nn
from torch.utils.data import DataLoader

from contextrast.config import Config, ConfigError, config_from_dict
from contextrast.data import DatasetError
from contextrast.engine.builders import build_contrast, build_model, build_region, build_split
from contextrast.engine.step import TrainingModule
from contextrast.utils.checkpoint import load_checkpoint, load_weights


def norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def encoder_gradients(
    rest: TrainingModule,
    contrast: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    step: int | None = None,
    scale: float = 1.0,
) -> dict[str, float | None]:
    """The gradients on ``rest.model.encoder``'s parameters of the loss without the term
    (``rest``: a :class:`TrainingModule` without a contrastive loss) and of ``scale`` times
    the term, one batch.

    images: (B, 3, H, W); target: (B, H, W) class ids. ``step`` goes to a term that takes
    it. The model runs twice on the batch (the rest of the loss runs it inside ``rest``): a
    model with dropout draws two masks, so the two gradients then come from two draws.
    Returns the two loss values, the two gradients' norms, ``ratio`` (the term's norm
    over the rest's) and ``cosine`` between them; each is None where it divides by a zero
    norm.
    """
    params = [p for p in rest.model.encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the encoder has no trainable parameter: no gradient to measure")
    base = rest(images, target).total  # labelled pixels: the trainer's mean, 0 with none
    out = rest.model(images)
    takes_step = "step" in inspect.signature(contrast.forward).parameters
    timed = {"step": step} if takes_step and step is not None else {}
    term = scale * contrast(out.features, out.logits, target, **timed)
    g_rest = torch.autograd.grad(base, params, allow_unused=True)
    g_term = torch.autograd.grad(term, params, allow_unused=True)
    pairs = [
        (a if a is not None else torch.zeros_like(p), b if b is not None else torch.zeros_like(p))
        for p, a, b in zip(params, g_rest, g_term)
    ]
    n_rest, n_term = norm([a for a, _ in pairs]), norm([b for _, b in pairs])
    dot = sum(float((a.double() * b.double()).sum()) for a, b in pairs)
    return {
        "ce": float(base.detach()),
        "term": float(term.detach()),
        "grad_ce": n_rest,
        "grad_term": n_term,
        "ratio": n_term / n_rest if n_rest > 0 else None,
        "cosine": dot / (n_rest * n_term) if n_rest > 0 and n_term > 0 else None,
    }


class Run(NamedTuple):
    config: Config
    data: torch.utils.data.Dataset
    rest: TrainingModule
    contrast: nn.Module
    step: int
    scale: float


def load_run(folder: Path) -> Run:
    """The run's data, model, rest of its loss and its contrastive term with their trained
    weights; a one-line exit naming the folder where it is not a trained contrastive run."""
    try:
        state = load_checkpoint(folder / "last.pt")
        config = config_from_dict(state["config"])
        step = state.get("iteration", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"iteration {step!r} in last.pt is not a step count")
        if not state.get("contrast"):
            raise ValueError("a run without a trained contrastive term (loss.name: ce)")
        data = build_split(config, config.data.train_split, train=True)
        model = build_model(config, data.num_classes, pretrained=False)
        load_weights(model, state["model"], folder / "last.pt", "model")
        contrast = build_contrast(config, data.num_classes, model.feature_channels)
        load_weights(contrast, state["contrast"], folder / "last.pt", "contrastive loss")
        rest = TrainingModule(
            model, None, config.model.aux_weight, data.ignore_index, build_region(config)
        )
    except (OSError, ValueError, ConfigError, DatasetError) as error:
        raise SystemExit(f"{folder}: {' '.join(str(error).split())}") from None
    # The trainer's switch: the term counts from the step after its warm-up.
    scale = 1.0 if step >= config.loss.contrast_warmup_iters else 0.0
    return Run(config, data, rest.train(), contrast.train(), step, scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    for option, value in (("--batches", args.batches), ("--threads", args.threads)):
        if value < 1:
            raise SystemExit(f"{option} {value}: must be at least 1")
    if args.out:
        check_out(args.out)
    torch.set_num_threads(args.threads)
    runs = [(folder, load_run(folder)) for folder in args.runs]
    rows = []
    for folder, run in runs:
        torch.manual_seed(args.seed)
        batches = DataLoader(run.data, batch_size=run.config.data.batch_size, shuffle=True)
        for i, batch in zip(range(args.batches), batches):
            row = encoder_gradients(run.rest, run.contrast, batch[0], batch[1], run.step, run.scale)
            rows.append({"run": folder.name, "batch": i, "step": run.step, **row})
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
            cosine = "n/a" if row["cosine"] is None else f"{row['cosine']:+.3f}"
            print(
                f"{folder.name} batch {i}: CE {row['ce']:.4f}, term {row['term']:.4f}; "
                f"|grad| CE {row['grad_ce']:.4f}, term {row['grad_term']:.4f}; "
                f"ratio {ratio}, cosine {cosine}"
            )
        if len(batches) < args.batches:
            count = f"{len(batches)} batch" + ("es" if len(batches) != 1 else "")
            print(f"note: {folder.name}: its training split holds {count}, all measured")
    if args.out:
        write_result(args.out, "gradient_share", rows, batches=args.batches, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
