"""``accuracy.py`` results of one benchmark trained in several invocations (a method or a seed
at a time, in queues side by side) as one file: its rows merged by method and seed.

    python benchmarks/merge_results.py A.json B.json C.json --out merged.json

The merged file is an ``accuracy.py`` result like any other (``pooled.py`` and
``fit_curve.py`` pair its methods to CE per seed). Refused in one line naming the files:
results of another config (the config file and ``--set`` resolved: an override that restates
the file's own value is the same benchmark), another ``--iters`` or protocol; a method and
seed that two files read differently; a file given twice. Each input's date and run folders
are kept (``merged_from``, ``runs``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from results_io import check_out, read_accuracy, write_result

from contextrast.config import ConfigError, load_config


def _resolved(result: dict, path: Path) -> dict:
    """The benchmark's base config (file and ``--set``) resolved, run name aside."""
    try:
        data = load_config(result["config"], result.get("overrides") or []).to_dict()
    except (OSError, ConfigError) as error:
        raise SystemExit(f"{path}: its config cannot be resolved here ({error})") from None
    data.get("run", {}).pop("name", None)
    return data


def merge(paths: list[Path]) -> dict:
    """The merged result's fields (rows, seeds, runs, evaluations, ...), before writing."""
    if len({p.resolve() for p in paths}) != len(paths):
        raise SystemExit("merge_results.py: a file is given twice")
    results = [read_accuracy(p) for p in paths]
    first, base = results[0], _resolved(results[0], paths[0])
    for path, result in zip(paths[1:], results[1:]):
        for key in ("iters", "protocol"):
            if result.get(key) != first.get(key):
                raise SystemExit(
                    f"{path}: {key} {result.get(key)!r} differs from {first.get(key)!r} in "
                    f"{paths[0]}: not one benchmark"
                )
        if _resolved(result, path) != base:
            raise SystemExit(
                f"{path}: its config {result['config']} with --set {result.get('overrides')} "
                f"is not that of {paths[0]} ({first['config']}, {first.get('overrides')})"
            )
    per_seed: dict[str, dict[str, dict]] = {}
    runs, evaluations, variants, origin = {}, {}, {}, {}
    for path, result in zip(paths, results):
        for row in result["rows"]:
            seeds = per_seed.setdefault(row["method"], {})
            for seed, scores in row["per_seed"].items():
                if seed in seeds and seeds[seed]["miou"] != scores["miou"]:
                    raise SystemExit(
                        f"{path}: {row['method']} seed {seed} reads {scores['miou']} but "
                        f"{origin[(row['method'], seed)]} reads {seeds[seed]['miou']}"
                    )
                seeds[seed] = scores
                origin[(row["method"], seed)] = path
        runs.update(result.get("runs") or {})
        evaluations.update(result.get("evaluations") or {})
        variants.update(result.get("variants") or {})
    rows = []
    for method, seeds in per_seed.items():
        order = sorted(seeds, key=int)
        row = {"method": method, "per_seed": {s: seeds[s] for s in order}}
        for metric in ("miou", "boundary_miou_5", "tail_miou"):
            if all(metric in seeds[s] for s in order):
                row[metric] = [seeds[s][metric] for s in order]
        rows.append(row)
    return {
        "config": first["config"],
        "overrides": first.get("overrides") or [],
        "iters": first.get("iters"),
        "variants": variants,
        "seeds": sorted({int(s) for seeds in per_seed.values() for s in seeds}),
        "protocol": first.get("protocol"),
        "merged_from": [{"file": str(p), "date": r.get("date")} for p, r in zip(paths, results)],
        "rows": rows,
        "runs": runs,
        "evaluations": evaluations,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="accuracy.py results")
    parser.add_argument("--out", required=True, help="the merged result (JSON)")
    args = parser.parse_args(argv)
    out = check_out(args.out, suffix=".json")
    merged = merge(args.files)
    rows = merged.pop("rows")
    write_result(out, "accuracy", rows, **merged)
    for row in rows:
        shown = ", ".join(f"{s}: {100 * v['miou']:.2f}" for s, v in row["per_seed"].items())
        print(f"{row['method']:<20} {shown}")


if __name__ == "__main__":
    sys.exit(main())
