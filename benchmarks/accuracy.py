"""Accuracy of CE, Contextrast and each peer loss on one config, paired seeds.

    python benchmarks/accuracy.py --config configs/inia19/contextrast.yaml --seeds 0 1 2
    python benchmarks/accuracy.py [--seeds 0 1 2] [--methods ce contextrast ...]   # digits
    python benchmarks/accuracy.py --k-sweep 0 0.1 0.3 0.5 0.7 1 --seeds 0
    python benchmarks/accuracy.py --methods ce contextrast \
        --variant "detach:loss.contrast.detach_anchors=true" --set run.device=cuda --jobs 8

Every run uses one config (default configs/digits/contextrast.yaml, the demo's setting:
ImageNet-pretrained EfficientNet-Lite0 + HRNetV2-style head, batch 8; the real-image benchmark
is configs/inia19/contextrast.yaml) with only ``loss.name`` (and the seed) changed, so that for
a given seed every method starts from the same weights and sees the same batches. Runs are
seed-major and each finished run is reused, so an interrupted benchmark continues where it
stopped. Prints mean ± sd of mIoU and boundary mIoU (5 px) and
the paired difference to CE; writes JSON (``--out``).
``--variant NAME:KEY=VALUE,...`` adds a Contextrast run with config overrides; ``--set`` applies
overrides to every run (and names the run folders apart); ``--jobs`` trains runs in parallel
processes (for a GPU, where one small run leaves the device mostly idle).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import torch

from contextrast.config import ConfigError, load_config
from contextrast.demo import prepare_weights
from contextrast.engine import Trainer, finished_metrics

DIGITS = Path("configs/digits/contextrast.yaml")
PEER_SETTINGS = {
    "pixel_contrast": ["loss.pixel_contrast.embed_dim=128"],
    "ms_cs": ["loss.ms_cs.embed_dim=128"],
    "region_contrast": ["loss.region_contrast.embed_dim=128"],
}


def config_for(config: Path, method: str, seed: int, extra: list[str], tag: str, iters: int | None):
    loss = "contextrast" if method.startswith("contextrast") else method
    overrides = [
        f"loss.name={loss}",
        f"run.seed={seed}",
        f"run.name={tag}_s{seed}",
        f"run.output_dir=runs/bench_{config.parent.name}",
        *PEER_SETTINGS.get(method, []),
        *extra,
    ]
    if iters:
        overrides.append(f"optim.iters={iters}")
    return load_config(config, overrides)


def run(
    config_path: Path,
    method: str,
    seed: int,
    extra: list[str],
    tag: str,
    iters: int | None,
    train: bool = True,
) -> dict | None:
    config = config_for(config_path, method, seed, extra, tag, iters)
    finished = finished_metrics(config)
    if finished is not None or not train:
        return finished
    return Trainer(config, resume=(config.run_dir / "last.pt").is_file()).fit()


def tag_of(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "p" if c == "." else "" for c in name)


def summary(values: list[float]) -> str:
    mean = statistics.mean(values) * 100
    sd = statistics.stdev(values) * 100 if len(values) > 1 else float("nan")
    return f"{mean:.2f} ± {sd:.2f}"


def parse_variant(text: str) -> tuple[str, tuple[str, list[str]]]:
    name, sep, overrides = text.partition(":")
    if not sep or not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, ("contextrast", overrides.split(","))


def train_one(job: tuple) -> tuple[str, int, dict | None]:
    config, name, seed, method, extra, tag, iters, train, threads = job
    if threads:
        torch.set_num_threads(threads)
    return name, seed, run(config, method, seed, extra, tag, iters, train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DIGITS, help="the Contextrast config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["ce", "contextrast", "pixel_contrast", "ms_cs", "region_contrast"],
    )
    parser.add_argument("--k-sweep", type=float, nargs="*", help="bane_ratio values instead")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra Contextrast run with these config overrides (repeatable)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    parser.add_argument("--iters", type=int, help="override the config's iterations")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel")
    parser.add_argument(
        "--threads", type=int, help="torch threads per run (default: 2 with --jobs)"
    )
    parser.add_argument(
        "--out", help="JSON file (default: benchmarks/results/<config folder>_accuracy.json)"
    )
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
    variants.update(parse_variant(v) for v in args.variant)
    # Runs under different shared overrides must not reuse each other's folders.
    suffix = "_" + hashlib.sha1("|".join(args.set).encode()).hexdigest()[:6] if args.set else ""
    jobs = [
        (args.config, name, seed, method, [*args.set, *extra], tag_of(name) + suffix,
         args.iters, not args.report_only, args.threads or (2 if args.jobs > 1 else 0))
        for seed in args.seeds
        for name, (method, extra) in variants.items()
    ]  # fmt: skip
    for config, name, seed, method, extra, tag, iters, *_ in jobs[: len(variants)]:
        try:  # a bad override stops here in one line, not in a worker's traceback
            config_for(config, method, seed, extra, tag, iters)
        except ConfigError as error:
            raise SystemExit(f"{name}: {error}") from None
    results: dict[str, dict[int, dict]] = {name: {} for name in variants}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            finished = list(pool.map(train_one, jobs))
    else:
        finished = [train_one(job) for job in jobs]
    for name, seed, metrics in finished:
        if metrics is None:
            continue
        results[name][seed] = {
            "miou": metrics["miou"],
            "boundary_miou_5": metrics["boundary_miou"]["5"],
            "seconds_per_iter": metrics["seconds_per_iter"],
        }
    reference = "ce" if "ce" in results else next(iter(results))
    print(
        f"{args.config}, seeds {args.seeds}: mean ± sd over seeds; "
        f"Δ = paired difference to {reference}"
    )
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
    out = Path(args.out or f"benchmarks/results/{args.config.parent.name}_accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "accuracy",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(args.config), "overrides": args.set, "iters": args.iters,
        "variants": {name: extra for name, (_, extra) in variants.items()},
        "seeds": args.seeds, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
