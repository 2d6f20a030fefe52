"""Accuracy on the digits set: CE, Contextrast and each peer loss, paired seeds.

    python benchmarks/digits_accuracy.py [--seeds 0 1 2] [--methods ce contextrast ...]
    python benchmarks/digits_accuracy.py --k-sweep 0 0.1 0.3 0.5 0.7 1 --seeds 0

Every run uses configs/digits/contextrast.yaml (the demo's setting: ImageNet-pretrained
EfficientNet-Lite0 + HRNetV2-style head, 400 iterations, batch 8) with only ``loss.name`` (and
the seed) changed, so that for a given seed every method starts from the same weights and sees
the same batches. Runs are seed-major and each finished run is reused, so an interrupted
benchmark continues where it stopped. Prints mean ± sd of mIoU and boundary mIoU (5 px) and
the paired difference to CE; writes JSON (``benchmarks/results/digits_accuracy.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

from contextrast.config import load_config
from contextrast.demo import prepare_weights
from contextrast.engine.trainer import Trainer

CONFIG = Path("configs/digits/contextrast.yaml")
PEER_SETTINGS = {
    "pixel_contrast": ["loss.pixel_contrast.embed_dim=128"],
    "ms_cs": ["loss.ms_cs.embed_dim=128"],
    "region_contrast": ["loss.region_contrast.embed_dim=128"],
}


def run(
    method: str, seed: int, extra: list[str], tag: str, iters: int | None, train: bool = True
) -> dict | None:
    loss = "contextrast" if method.startswith("contextrast") else method
    overrides = [
        f"loss.name={loss}",
        f"run.seed={seed}",
        f"run.name={tag}_s{seed}",
        "run.output_dir=runs/bench_digits",
        *PEER_SETTINGS.get(method, []),
        *extra,
    ]
    if iters:
        overrides.append(f"optim.iters={iters}")
    config = load_config(CONFIG, overrides)
    state = config.run_dir / "last.pt"
    if state.is_file() and (config.run_dir / "metrics.jsonl").is_file():
        last = json.loads((config.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        if last["iteration"] >= config.optim.iters:
            return last
    if not train:
        return None
    return Trainer(config, resume=state.is_file()).fit()


def summary(values: list[float]) -> str:
    mean = statistics.mean(values) * 100
    sd = statistics.stdev(values) * 100 if len(values) > 1 else float("nan")
    return f"{mean:.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["ce", "contextrast", "pixel_contrast", "ms_cs", "region_contrast"],
    )
    parser.add_argument("--k-sweep", type=float, nargs="*", help="bane_ratio values instead")
    parser.add_argument("--iters", type=int, help="override the config's iterations")
    parser.add_argument("--out", default="benchmarks/results/digits_accuracy.json")
    parser.add_argument(
        "--report-only", action="store_true", help="tabulate finished runs, train nothing"
    )
    args = parser.parse_args()
    prepare_weights()
    if args.k_sweep:
        variants = {
            f"K={k:g}": ("contextrast", [f"loss.contrast.bane_ratio={k}"]) for k in args.k_sweep
        }
    else:
        variants = {m: (m, []) for m in args.methods}
    results: dict[str, dict[int, dict]] = {name: {} for name in variants}
    for seed in args.seeds:
        for name, (method, extra) in variants.items():
            tag = name.replace("=", "").replace(".", "p")
            metrics = run(method, seed, extra, tag, args.iters, train=not args.report_only)
            if metrics is None:
                continue
            results[name][seed] = {
                "miou": metrics["miou"],
                "boundary_miou_5": metrics["boundary_miou"]["5"],
                "seconds_per_iter": metrics["seconds_per_iter"],
            }
    reference = "ce" if "ce" in results else next(iter(results))
    print(f"digits, seeds {args.seeds}: mean ± sd over seeds; Δ = paired difference to {reference}")
    print(
        f"{'method':<18}{'mIoU':>16}{'B-mIoU 5 px':>16}{'Δ mIoU':>16}{'Δ B-mIoU':>16}{'s/iter':>8}"
    )
    rows = []
    for name, by_seed in results.items():
        seeds = sorted(set(by_seed) & set(results[reference]))
        if not seeds:
            continue
        miou = [by_seed[s]["miou"] for s in seeds]
        band = [by_seed[s]["boundary_miou_5"] for s in seeds]
        d_miou = [by_seed[s]["miou"] - results[reference][s]["miou"] for s in seeds]
        d_band = [
            by_seed[s]["boundary_miou_5"] - results[reference][s]["boundary_miou_5"] for s in seeds
        ]
        seconds = statistics.mean(by_seed[s]["seconds_per_iter"] for s in seeds)
        print(
            f"{name:<18}{summary(miou):>16}{summary(band):>16}{summary(d_miou):>16}{summary(d_band):>16}{seconds:>8.3f}"
        )
        rows.append({"method": name, "per_seed": by_seed, "miou": miou, "boundary_miou_5": band})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "digits_accuracy",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(CONFIG), "seeds": args.seeds, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
