"""Several benchmark results read as one: the mean paired Δ over their settings and its
standard error.

    python benchmarks/pooled.py benchmarks/results/inia19_{coronal,sagittal,axial}_region.json
    python benchmarks/pooled.py AFTER_1.json AFTER_2.json --before BEFORE_1.json BEFORE_2.json

Each file is an ``accuracy.py`` result on one setting (an orientation). A method's Δ mIoU is
paired per seed (the seeds both rows have) within each setting: to the ``--reference``
method of the same file, or, with ``--before``, to the same method in the matching file of
another implementation (same config, ``--set`` and ``--iters``, refused otherwise; same
seeds: what a code change did). Printed per
method: each setting's mean Δ ± sd over seeds, and the mean over settings with its standard
error sqrt(Σ sd_f² / n_f) / F (the seeds' training noise; the validation sets are
independent across settings), then every seed's Δ pooled: mean ± sd / √n.

Every run is counted once: a file given twice, or two files that hold one run (the run
folders ``accuracy.py`` records end in the key of the run's resolved config), is refused.
A method that is not in every file is left out with a note naming the files that lack it.
A file is checked entry by entry before anything is counted (``results_io.read_accuracy``). A
standard deviation of one seed is undefined: it prints as ``n/a``, and so does a standard
error that needs it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import sys
from pathlib import Path

from results_io import read_accuracy, sd, shown


def rows_of(path: Path, metric: str = "miou") -> dict[str, dict]:
    """The rows of an ``accuracy.py`` result by method, each with ``metric`` for every seed."""
    return {row["method"]: row for row in read_accuracy(path, metric)["rows"]}


def _bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SystemExit(f"{path}: cannot be read ({error.strerror})") from None


def check_distinct(paths: list[Path], files_only: list[Path] = ()) -> None:
    """Exit in one line when two of ``paths`` are one file, or hold one run: pooling them
    would count its seeds twice and shrink the standard error. ``files_only``: files that
    none of ``paths`` may be (their runs may share names with those of ``paths``)."""
    seen_files: dict[str, Path] = {}
    seen_runs: dict[str, Path] = {}
    for path in files_only:
        seen_files[str(path.resolve())] = path
        seen_files[hashlib.sha1(_bytes(path)).hexdigest()] = path
    for path in paths:
        text = _bytes(path)
        for key in (str(path.resolve()), hashlib.sha1(text).hexdigest()):
            if key in seen_files:
                where = " (in --before)" if files_only else ""
                raise SystemExit(
                    f"{path}{where}: the same result as {seen_files[key]}; give each once"
                )
            seen_files[key] = path
        for run in read_accuracy(path).get("runs", {}).values():
            if run in seen_runs:
                raise SystemExit(
                    f"{path}: holds the run {run}, which {seen_runs[run]} holds too; a run "
                    "is counted once"
                )
            seen_runs[run] = path


def settings_of(path: Path) -> tuple:
    """What an ``accuracy.py`` run was asked for: config file, overrides, iterations."""
    result = read_accuracy(path)
    return result.get("config"), sorted(result.get("overrides") or []), result.get("iters")


def check_same_settings(before: Path, after: Path) -> None:
    """``--before`` pairs one setting run by two checkouts; another config, ``--set`` or
    ``--iters`` (another orientation, say) would pair other data: one line naming both."""
    if settings_of(before) != settings_of(after):
        (c1, o1, i1), (c2, o2, i2) = settings_of(before), settings_of(after)
        raise SystemExit(
            f"--before {before} ran {c1} {o1} iters {i1}, but {after} ran {c2} {o2} iters {i2}; "
            "--before pairs the same settings, file by file in order"
        )


def paired(reference: dict, row: dict, metric: str) -> list[float]:
    """Δ in points, row − reference, over the seeds both were run with."""
    seeds = sorted(set(reference["per_seed"]) & set(row["per_seed"]), key=int)
    return [(row["per_seed"][s][metric] - reference["per_seed"][s][metric]) * 100 for s in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--reference", default="ce")
    parser.add_argument("--before", type=Path, nargs="+", help="one file per result, in order")
    parser.add_argument(
        "--metric", default="miou", choices=["miou", "boundary_miou_5", "tail_miou"]
    )
    args = parser.parse_args(argv)
    if args.before and len(args.before) != len(args.results):
        raise SystemExit(f"--before: {len(args.before)} files for {len(args.results)} results")
    check_distinct(args.results)
    if args.before:  # the same settings on another checkout: its run names may repeat
        check_distinct(args.before, files_only=args.results)
    files = [(path, rows_of(path, args.metric)) for path in args.results]
    for before, after in zip(args.before or [], args.results):
        check_same_settings(before, after)
    if args.before:
        against = [rows_of(path, args.metric) for path in args.before]
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
    listed = dict.fromkeys(m for _, rows in [*files, *((None, r) for r in against)] for m in rows)
    for method in listed:
        if method in methods or (not args.before and method == args.reference):
            continue
        lacking = [str(path) for path, rows in files if method not in rows]
        if args.before:
            lacking += [str(p) for p, rows in zip(args.before, against) if method not in rows]
        print(f"note: {method} left out: not in {', '.join(lacking)}")
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
            spread = sd(deltas)
            cells.append(f"{statistics.mean(deltas):+.2f} ± {shown(spread)} (n={len(deltas)})")
            means.append(statistics.mean(deltas))
            variances.append(None if spread is None else spread**2 / len(deltas))
            every += deltas
        error = None if None in variances else math.sqrt(sum(variances)) / len(files)
        spread = None if len(every) < 2 else sd(every) / math.sqrt(len(every))
        pooled = f"{statistics.mean(every):+.2f} ± {shown(spread)} (n={len(every)})"
        print(f"{method:<20}" + "".join(f"{c:>28}" for c in cells)
              + f"{statistics.mean(means):>+11.2f} ± {shown(error)}{pooled:>24}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
