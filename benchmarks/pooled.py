"""Several benchmark results read as one: the mean paired Δ over their settings and its
standard error.

    python benchmarks/pooled.py benchmarks/results/inia19_{coronal,sagittal,axial}_region.json

Each file is an ``accuracy.py`` result on one setting (an orientation); a method's Δ mIoU to
the reference is paired per seed within each file. Printed per method: each file's mean Δ,
and the mean over files with its standard error sqrt(Σ sd_f² / n_f) / F (the files'
training noise; the validation sets are independent across files).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--reference", default="ce")
    parser.add_argument("--metric", default="miou", choices=["miou", "boundary_miou_5"])
    args = parser.parse_args(argv)
    files = []
    for path in args.results:
        rows = {row["method"]: row for row in json.loads(path.read_text())["rows"]}
        if args.reference not in rows:
            raise SystemExit(f"{path}: no {args.reference!r} row")
        files.append((path.stem, rows))
    methods = [m for m in files[0][1] if m != args.reference and all(m in r for _, r in files)]
    names = [stem for stem, _ in files]
    print(f"Δ {args.metric} to {args.reference} (points), paired per seed: mean ± sd per file; "
          "mean over files ± standard error")  # fmt: skip
    print(f"{'method':<20}" + "".join(f"{n:>28}" for n in names) + f"{'mean ± s.e.':>18}")
    for method in methods:
        cells, means, variances = [], [], []
        for _, rows in files:
            ref, row = rows[args.reference][args.metric], rows[method][args.metric]
            deltas = [(b - a) * 100 for a, b in zip(ref, row)]
            sd = statistics.stdev(deltas) if len(deltas) > 1 else math.nan
            cells.append(f"{statistics.mean(deltas):+.2f} ± {sd:.2f} (n={len(deltas)})")
            means.append(statistics.mean(deltas))
            variances.append(sd**2 / len(deltas))
        error = math.sqrt(sum(variances)) / len(files)
        print(f"{method:<20}" + "".join(f"{c:>28}" for c in cells)
              + f"{statistics.mean(means):>+11.2f} ± {error:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
