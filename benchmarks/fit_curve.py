"""The fit curve: each method's paired gain over CE against how well CE itself fits.

    python benchmarks/fit_curve.py \\
        --schedule "SGD 400" benchmarks/results/inia19_{coronal,sagittal,axial}_region.json \\
        --schedule "AdamW 400" benchmarks/results/inia19_{coronal,sagittal,axial}_adamw.json \\
        --png docs/fit_curve.png --out benchmarks/results/inia19_fit_curve.json

Each ``--schedule NAME FILE...`` is one training schedule: ``accuracy.py`` results on the same
settings but the orientation (or data set), which must not share a run
(``pooled.check_distinct``). Per schedule and method: CE's mIoU (mean over the files), the
paired Δ mIoU to CE (per file the mean over the seeds both have; then the mean over files ±
its standard error sqrt(Σ sd_f² / n_f) / F, as ``pooled.py``), and the per-file Δs. Prints a
Markdown table, writes the JSON and one plot: Δ mIoU over CE (y) against CE's mIoU (x), a
line per method through its schedules, error bars of one standard error. A file of one seed
has no sd, so its schedule's standard error is undefined: printed ``n/a``, written ``null``,
drawn without an error bar. ``--png`` and ``--out`` are checked before any file is read.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from pooled import check_distinct, paired, rows_of
from results_io import check_out, sd, shown, write_result


def _mean_miou(row: dict, other: dict) -> float:
    """A row's mIoU in points, the mean over the seeds it shares with ``other``."""
    seeds = set(row["per_seed"]) & set(other["per_seed"])
    return statistics.mean(row["per_seed"][s]["miou"] for s in seeds) * 100


def schedule_rows(name: str, paths: list[Path], reference: str) -> list[dict]:
    """One row per method of ``paths`` (those in every file), its reference first."""
    files = [rows_of(path) for path in paths]
    for path, rows in zip(paths, files):
        if reference not in rows:
            raise SystemExit(f"{path}: no {reference!r} row; it has {sorted(rows)}")
    methods = [m for m in files[0] if all(m in rows for rows in files)]
    for method in dict.fromkeys(m for rows in files for m in rows):
        if method not in methods:
            lacking = [str(p) for p, rows in zip(paths, files) if method not in rows]
            print(f"note: {name}: {method} left out: not in {', '.join(lacking)}")
    out = []
    for method in [reference, *(m for m in methods if m != reference)]:
        means, variances, per_file, seeds = [], [], [], 0
        for path, rows in zip(paths, files):
            deltas = paired(rows[reference], rows[method], "miou")
            if not deltas:
                raise SystemExit(f"{path}: {method} shares no seed with {reference}")
            spread = sd(deltas)
            means.append(statistics.mean(deltas))
            variances.append(None if spread is None else spread**2 / len(deltas))
            per_file.append(round(statistics.mean(deltas), 3))
            seeds += len(deltas)
        # Both over the seeds the pair shares, as the Δ.
        ce = [_mean_miou(rows[reference], rows[method]) for rows in files]
        own = [_mean_miou(rows[method], rows[reference]) for rows in files]
        out.append({
            "schedule": name, "method": method, "reference_miou": statistics.mean(ce),
            "miou": statistics.mean(own), "delta": statistics.mean(means),
            "se": None if None in variances else math.sqrt(sum(variances)) / len(files),
            "per_file": per_file, "runs": seeds,
        })  # fmt: skip
    return out


def plot(rows: list[dict], reference: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != reference]
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["reference_miou"])
        x = [r["reference_miou"] for r in mine]
        y = [r["delta"] for r in mine]
        se = [math.nan if r["se"] is None else r["se"] for r in mine]  # NaN: no bar drawn
        axis.errorbar(x, y, yerr=se, marker="o", capsize=3, label=method)
        for r in mine:
            axis.annotate(r["schedule"], (r["reference_miou"], r["delta"]), fontsize=7,
                          textcoords="offset points", xytext=(4, 4))  # fmt: skip
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xlabel(f"{reference} mIoU (mean over settings)")
    axis.set_ylabel(f"Δ mIoU over {reference} (points, ± s.e.)")
    axis.set_title("Gain over CE against how well CE fits")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--schedule", nargs="+", action="append", required=True, metavar="NAME FILE",
        help="a schedule's name, then its accuracy.py results (repeatable)",
    )  # fmt: skip
    parser.add_argument("--reference", default="ce")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.png:
        check_out(args.png, "--png", suffix=".png")
    if args.out:
        check_out(args.out)
    rows = []
    for name, *files in args.schedule:
        if name.endswith(".json") or Path(name).is_file():
            raise SystemExit(
                f"--schedule {name!r}: a file, not a name; the name comes first: "
                "--schedule NAME FILE..."
            )
        if not files:
            raise SystemExit(f"--schedule {name!r}: give its accuracy.py result files")
    names = [name for name, *_ in args.schedule]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SystemExit(
            f"--schedule {twice!r} given twice: one --schedule per name, its files together"
        )
    # One file, or one run, in two places would be counted twice.
    inputs = [Path(f) for _, *files in args.schedule for f in files]
    check_distinct(inputs)
    for option, given in (("--png", args.png), ("--out", args.out)):
        if given and any(given.resolve() == path.resolve() for path in inputs):
            raise SystemExit(f"{option} {given}: a result file it reads; name another file")
    for name, *files in args.schedule:
        rows += schedule_rows(name, [Path(f) for f in files], args.reference)
    print(f"| schedule | {args.reference} mIoU | method | mIoU | Δ mIoU ± s.e. | per setting |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] == args.reference:
            continue
        each = ", ".join(f"{d:+.2f}" for d in r["per_file"])
        print(f"| {r['schedule']} | {r['reference_miou']:.2f} | {r['method']} | {r['miou']:.2f} "
              f"| {r['delta']:+.2f} ± {shown(r['se'])} | {each} |")  # fmt: skip
    if args.png:
        plot(rows, args.reference, args.png)
        print(f"wrote {args.png}")
    if args.out:
        write_result(args.out, "fit_curve", rows, schedules=args.schedule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
