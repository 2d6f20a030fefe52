"""Several benchmark results read as one: the mean paired Δ over their settings and its
standard error.

    python benchmarks/pooled.py benchmarks/results/inia19_{coronal,sagittal,axial}_region.json
    python benchmarks/pooled.py AFTER_1.json AFTER_2.json --before BEFORE_1.json BEFORE_2.json

Each file is an ``accuracy.py`` result on one setting (an orientation). A method's Δ mIoU is
paired per seed (the seeds both rows have) within each setting: to the ``--reference``
method of the same file, or, with ``--before``, to the same method in the matching file of
another implementation (same config, same seeds: what a code change did). Printed per
method: each setting's mean Δ ± sd over seeds, and the mean over settings with its standard
error sqrt(Σ sd_f² / n_f) / F (the seeds' training noise; the validation sets are
independent across settings), then every seed's Δ pooled: mean ± sd / √n.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def rows_of(path: Path) -> dict[str, dict]:
    try:
        return {row["method"]: row for row in json.loads(path.read_text())["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: not an accuracy.py result ({error})") from None


def paired(reference: dict, row: dict, metric: str) -> list[float]:
    """Δ in points, row − reference, over the seeds both were run with."""
    seeds = sorted(set(reference["per_seed"]) & set(row["per_seed"]), key=int)
    return [(row["per_seed"][s][metric] - reference["per_seed"][s][metric]) * 100 for s in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--reference", default="ce")
    parser.add_argument("--before", type=Path, nargs="+", help="one file per result, in order")
    parser.add_argument("--metric", default="miou", choices=["miou", "boundary_miou_5"])
    args = parser.parse_args(argv)
    if args.before and len(args.before) != len(args.results):
        raise SystemExit(f"--before: {len(args.before)} files for {len(args.results)} results")
    files = [(path, rows_of(path)) for path in args.results]
    if args.before:
        against = [rows_of(path) for path in args.before]
        title = "the same method before (--before files)"
    else:
        for path, rows in files:
            if args.reference not in rows:
                raise SystemExit(f"{path}: no {args.reference!r} row; it has {sorted(rows)}")
        against = [rows for _, rows in files]
        title = args.reference
    methods = [
        m
        for m in files[0][1]
        if (args.before or m != args.reference)
        and all(m in rows for _, rows in files)
        and (not args.before or all(m in rows for rows in against))
    ]
    if not methods:
        raise SystemExit("no method is in every file")
    print(f"Δ {args.metric} to {title} (points), paired per seed: mean ± sd per file; "
          "mean over files ± standard error; all seeds pooled")  # fmt: skip
    header = "".join(f"{path.stem:>28}" for path, _ in files)
    print(f"{'method':<20}{header}{'mean ± s.e.':>18}{'pooled seeds':>24}")
    for method in methods:
        cells, means, variances, every = [], [], [], []
        for (path, rows), reference in zip(files, against):
            ref = reference[method if args.before else args.reference]
            deltas = paired(ref, rows[method], args.metric)
            if not deltas:
                raise SystemExit(f"{path}: {method} shares no seed with its reference")
            sd = statistics.stdev(deltas) if len(deltas) > 1 else math.nan
            cells.append(f"{statistics.mean(deltas):+.2f} ± {sd:.2f} (n={len(deltas)})")
            means.append(statistics.mean(deltas))
            variances.append(sd**2 / len(deltas))
            every += deltas
        error = math.sqrt(sum(variances)) / len(files)
        spread = statistics.stdev(every) / math.sqrt(len(every)) if len(every) > 1 else math.nan
        pooled = f"{statistics.mean(every):+.2f} ± {spread:.2f} (n={len(every)})"
        print(f"{method:<20}" + "".join(f"{c:>28}" for c in cells)
              + f"{statistics.mean(means):>+11.2f} ± {error:.2f}{pooled:>24}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
