"""The practitioner's path: Contextrast added to a model and loop of one's own, on INIA19.

    python benchmarks/dropin.py --model unet --seeds 0 1 2 [--root data/inia19/coronal]
        [--optimizer adamw --lr 1e-3] [--arms ce contextrast ce+lovasz contextrast+lovasz]
        [--contrast loss_weight=0.03 start_step=200]

A segmentation_models_pytorch model (``unet``: ``smp.Unet``, ``deeplabv3plus``:
``smp.DeepLabV3Plus``) on the same ImageNet-pretrained EfficientNet-Lite0 encoder as the
project's benchmark, or the project's own model (``hrnetv2``: that encoder under the
HRNetV2-style head of ``configs/inia19/contextrast.yaml``, wrapped to return logits only, so
that only the loop differs from the project's trainer), trained by the short loop below (the
README's snippet with an optimiser and a schedule: the trainer's SGD, or ``--optimizer
adamw`` as smp's examples train): CE alone and CE + ``ContextrastLoss`` (its defaults, or
``--contrast`` arguments; the loop passes ``step=``) through ``FeatureTap``, paired per seed
(same initial weights, same batches and augmentations as the project's trainer draws for that
seed), scored like the trainer (whole val slices, mIoU and boundary mIoU at 5 px) with the
final weights. Writes JSON (``--out``, by default named after the model, the set, the
optimiser, the learning rate and the iterations) and prints the paired table. A file holds the
runs of one setting: ``--out`` naming a file of other settings is refused, so that no run is
read under another setting's header, and so is a file that is not a dropin.py result (an
``accuracy.py`` one, say) or cannot be written. An sd of one seed is undefined: printed ``n/a``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import yaml
from results_io import check_out, finite, sd, shown
from torch import nn

from contextrast import ContextrastLoss, FeatureTap
from contextrast.config import load_config, read_yaml
from contextrast.data import EvalTransform, Folder, TrainTransform
from contextrast.demo import prepare_weights
from contextrast.engine.builders import build_model
from contextrast.engine.sampler import IterationBatchSampler
from contextrast.evaluation.evaluator import Evaluator, evaluate

MODELS = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus, "hrnetv2": None}
CONFIG = Path("configs/inia19/contextrast.yaml")
ARMS = ["ce", "contextrast", "ce+lovasz", "contextrast+lovasz"]
MEAN = STD = (0.5, 0.5, 0.5)  # what the EfficientNet-Lite0 weights were trained with


class Deployed(nn.Module):
    """What ``evaluate`` calls: the plain model's logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def inference(self):
        return self.model


class LogitsOnly(nn.Module):
    """The project's segmentor as a user's model: images in, full-size logits out."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor(images).logits  # (B, N, H/4, W/4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build(name: str, classes: int, weights: Path) -> nn.Module:
    if name == "hrnetv2":
        config = load_config(CONFIG, [f"model.pretrained={weights}"])
        return LogitsOnly(build_model(config, classes))
    model = MODELS[name]("tu-efficientnet_lite0", encoder_weights=None, classes=classes)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, _ = model.encoder.model.load_state_dict(state, strict=False)
    if missing:
        raise SystemExit(f"{weights}: the encoder lacks {missing[:3]}")
    return model


def train_one(args, seed: int, arm: str) -> dict:
    contrast_on = arm.startswith("contextrast")
    torch.manual_seed(seed)
    train = Folder(args.root, "train", TrainTransform((128, 160), (0.75, 1.25), 0.5,
                   (0.2, 0.2, 0.2, 0.0), MEAN, STD), seed=seed)  # fmt: skip
    val = Folder(args.root, "val", EvalTransform(MEAN, STD))
    classes = train.num_classes
    model = build(args.model, classes, prepare_weights())
    sampler = IterationBatchSampler(len(train), 8, 0, 1, seed, 0, args.iters)
    loader = torch.utils.data.DataLoader(train, batch_sampler=sampler)

    # --- the practitioner's loop: the README's lines plus an optimiser and a schedule ---
    tap = FeatureTap(model)
    contrast = ContextrastLoss(classes, tap.channels(next(iter(loader)).image[:2]), **args.contrast)
    params = [*model.parameters(), *contrast.parameters()]
    if args.optimizer == "sgd":  # the project trainer's optimiser
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    else:  # what smp's examples train with
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, args.iters, power=0.9)
    lovasz = smp.losses.LovaszLoss("multiclass", ignore_index=255) if "lovasz" in arm else None
    model.train()
    for step, batch in enumerate(loader, 1):
        logits = model(batch.image)
        loss = F.cross_entropy(logits, batch.label, ignore_index=255)
        features = tap.features()
        if lovasz is not None:  # a region term, as the trainer's loss.region.name=lovasz
            loss = loss + lovasz(logits, batch.label)
        if contrast_on:
            loss = loss + contrast(features, logits, batch.label, step=step - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"{args.model} seed {seed} {arm}: it {step} loss {loss:.4f}")
    tap.remove()
    # ------------------------------------------------------------------------------------

    metrics = evaluate(Deployed(model), val, Evaluator(val.classes, 255, boundary_widths=[5]),
                       torch.device("cpu"))  # fmt: skip
    return {"miou": metrics["miou"], "boundary_miou_5": metrics["boundary_miou"]["5"]}


def contrast_options(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``KEY=VALUE`` strings as ContextrastLoss keyword arguments (values read as YAML),
    checked against its constructor."""
    allowed = set(inspect.signature(ContextrastLoss).parameters) - {"num_classes", "in_channels"}
    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            parser.error(
                f"--contrast {item!r}: expected KEY=VALUE with KEY one of {sorted(allowed)}"
            )
        try:
            options[key] = read_yaml(raw)  # 3e-2 is a float, as in configs
        except yaml.YAMLError as error:  # its problem, without the lines that point at it
            parser.error(
                f"--contrast {item!r}: not a YAML value ({getattr(error, 'problem', error)})"
            )
    try:  # a bad value stops here, not after the CE arm has trained
        ContextrastLoss(2, [4] * 4, **options)
    except (TypeError, ValueError, RuntimeError) as error:  # torch's own checks: RuntimeError
        parser.error(f"--contrast {' '.join(items)}: {str(error).splitlines()[0]}")
    return options


def read_done(out: Path) -> dict:
    """The runs a dropin.py result at ``out`` holds; a ValueError saying what is wrong when it
    is not one (a file of another tool, a run without finite scores)."""
    done = json.loads(out.read_text())
    if not isinstance(done, dict) or not isinstance(done.get("runs"), dict):
        raise ValueError("no 'runs' mapping")
    for key, kind, what in (
        ("model", str, "name"),
        ("root", str, "folder"),
        ("iters", int, "count"),
    ):
        if not isinstance(done.get(key), kind):
            raise ValueError(f"no {key!r} {what}")
    for key, scores in done["runs"].items():
        arm, _, seed = key.partition("/")
        if arm not in ARMS or not seed.isdigit():
            raise ValueError(f"run {key!r} is not ARM/SEED")
        if not isinstance(scores, dict) or not all(
            finite(scores.get(m)) for m in ("miou", "boundary_miou_5")
        ):
            raise ValueError(f"run {key!r} has no finite miou and boundary_miou_5")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="unet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("data/inia19/coronal"))
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["ce", "contextrast"])
    parser.add_argument(
        "--contrast", nargs="*", default=[], metavar="KEY=VALUE",
        help="ContextrastLoss arguments beside the defaults (values as YAML: loss_weight=0.03)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.contrast = contrast_options(parser, args.contrast)
    if args.iters < 1:
        parser.error(f"--iters {args.iters}: must be >= 1")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be >= 1")
    if not 0 < args.lr < float("inf"):
        parser.error(f"--lr {args.lr}: must be finite and > 0")
    if not (args.root / "images" / "train").is_dir():
        parser.error(f"--root {args.root}: no images/train folder (build it with "
                     "`contextrast prepare inia19`)")  # fmt: skip
    torch.set_num_threads(args.threads)
    settings = {"model": args.model, "root": str(args.root.resolve()), "iters": args.iters,
                "optimizer": args.optimizer, "lr": args.lr, "contrast": args.contrast}  # fmt: skip
    extra = "".join(f"_{k}{v}" for k, v in sorted(args.contrast.items()))
    out = args.out or Path(
        f"benchmarks/results/dropin_{args.model}_{args.root.name}_{args.optimizer}"
        f"_lr{args.lr:g}_it{args.iters}{extra}.json"
    )
    check_out(out)  # written after each run: a folder or a file in the way stops it here
    try:
        done = read_done(out) if out.is_file() else {**settings, "runs": {}}
    except (OSError, ValueError) as error:
        parser.error(f"--out {out}: not a dropin.py result ({error}); give another --out")
    # Files written before the settings were recorded held SGD, lr 0.01, default-loss runs.
    before = {"optimizer": "sgd", "lr": 0.01, "contrast": {}}
    saved = {key: done.get(key, before.get(key)) for key in settings}
    saved["root"] = str(Path(saved["root"]).resolve())  # relative to where it was run
    if saved != settings:
        differ = ", ".join(f"{k} {saved[k]} (asked: {settings[k]})" for k in settings
                           if saved[k] != settings[k])  # fmt: skip
        raise SystemExit(
            f"--out {out}: holds runs of other settings ({differ}); give another --out"
        )
    for seed in args.seeds:
        for arm in args.arms:
            key = f"{arm}/{seed}"
            if key in done["runs"]:
                continue
            done["runs"][key] = train_one(args, seed, arm)
            done.update(settings, date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(done, indent=2) + "\n")  # after each run: resumable
    runs = done["runs"]
    how = f"{args.optimizer}, lr {args.lr:g}, {args.iters} iterations" + "".join(
        f", {k}={v}" for k, v in sorted(args.contrast.items())
    )
    print(f"{args.model} on {args.root} ({how}): mean ± sd over seeds; Δ paired to CE per seed")
    for arm in [a for a in ARMS if a != "ce"]:
        seeds = sorted(int(k.split("/")[1]) for k in runs if k.startswith(f"{arm}/"))
        seeds = [s for s in seeds if f"ce/{s}" in runs]
        for metric in ("miou", "boundary_miou_5") if seeds else ():
            ce = [runs[f"ce/{s}"][metric] * 100 for s in seeds]
            other = [runs[f"{arm}/{s}"][metric] * 100 for s in seeds]
            deltas = [b - a for a, b in zip(ce, other)]
            print(f"{arm} {metric}, seeds {seeds}: CE {statistics.mean(ce):.2f}, "
                  f"{arm} {statistics.mean(other):.2f}, Δ {statistics.mean(deltas):+.2f} ± "
                  f"{shown(sd(deltas))} ({', '.join(f'{d:+.2f}' for d in deltas)})")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
