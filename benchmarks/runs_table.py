"""Every finished run under a folder, one row each: what it trained (from its config.yaml) and
its last evaluation (metrics.jsonl).

    python benchmarks/runs_table.py runs/tune --keys optim.name optim.lr optim.iters run.seed \\
        --out benchmarks/results/inia19_coronal_ce_tuning.json

The rows name each run's ``settings_key`` (its whole resolved config but its name and folder),
so a row can be traced to exactly one setting. A run without an evaluation is listed as
unfinished; a run whose config.yaml cannot be read, or whose metrics.jsonl has a broken line
(blank lines are skipped), is left out with a note naming the file (and line). ``--out`` is
checked before any run is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from results_io import check_out, finite, read_metrics, write_result

from contextrast.config import ConfigError, config_from_dict
from contextrast.engine import settings_key


def value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SystemExit(f"--keys {dotted}: not a config key")
        node = node[part]
    return node


def reason(error: Exception) -> str:
    """An error in one line (a YAML error spans several)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split())


def number(score) -> float | None:
    """A score as the table shows it: None (printed "—") unless a finite number."""
    return score if finite(score) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--keys", nargs="*", default=["optim.name", "optim.lr", "optim.iters"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: not a folder of runs")
    if args.out:
        check_out(args.out)
    rows = []
    for saved in sorted(args.folder.glob("*/config.yaml")):
        try:
            config = config_from_dict(yaml.safe_load(saved.read_text()))
        except (ConfigError, yaml.YAMLError, OSError, ValueError) as error:  # not UTF-8 too
            print(f"note: {saved} left out: {reason(error)}")
            continue
        metrics = saved.parent / "metrics.jsonl"
        try:
            evaluations = read_metrics(metrics) if metrics.is_file() else []
        except (OSError, ValueError) as error:  # a broken line names the file and line
            print(f"note: {saved.parent} left out: {reason(error)}")
            continue
        data = config.to_dict()
        last = evaluations[-1] if evaluations else {}
        bands = last.get("boundary_miou")
        rows.append({
            "run": saved.parent.name, "settings_key": settings_key(config),
            **{key: value(data, key) for key in args.keys},
            "iteration": last.get("iteration"), "miou": number(last.get("miou")),
            "boundary_miou_5": number(bands.get("5")) if isinstance(bands, dict) else None,
        })  # fmt: skip
    if not rows:
        print(f"note: no run (a folder with config.yaml) under {args.folder}")
    columns = ["run", *args.keys, "iteration", "mIoU", "B-mIoU 5 px"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [str(row[key]) for key in args.keys]
        finished = row["iteration"] is not None or row["miou"] is not None
        scores = [
            f"{row[k] * 100:.2f}" if row[k] is not None else "unfinished" if not finished else "—"
            for k in ("miou", "boundary_miou_5")
        ]
        print(f"| {row['run']} | " + " | ".join([*cells, str(row["iteration"]), *scores]) + " |")
    if args.out:
        write_result(args.out, "runs_table", rows, folder=str(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
