"""Every finished run under a folder, one row each: what it trained (from its config.yaml) and
its last evaluation (metrics.jsonl).

    python benchmarks/runs_table.py runs/tune --keys optim.name optim.lr optim.iters run.seed \\
        --out benchmarks/results/inia19_coronal_ce_tuning.json

The rows name each run's ``settings_key`` (its whole resolved config but its name and folder),
so a row can be traced to exactly one setting. A run without an evaluation is listed as
unfinished.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from results_io import write_result

from contextrast.config import ConfigError, config_from_dict
from contextrast.engine import last_metrics, settings_key


def value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SystemExit(f"--keys {dotted}: not a config key")
        node = node[part]
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--keys", nargs="*", default=["optim.name", "optim.lr", "optim.iters"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: not a folder of runs")
    rows = []
    for saved in sorted(args.folder.glob("*/config.yaml")):
        try:
            config = config_from_dict(yaml.safe_load(saved.read_text()))
        except (ConfigError, yaml.YAMLError) as error:
            print(f"note: {saved} left out: {error}")
            continue
        data = config.to_dict()
        last = last_metrics(saved.parent)
        rows.append({
            "run": saved.parent.name, "settings_key": settings_key(config),
            **{key: value(data, key) for key in args.keys},
            "iteration": last.get("iteration"), "miou": last.get("miou"),
            "boundary_miou_5": last.get("boundary_miou", {}).get("5"),
        })  # fmt: skip
    if not rows:
        print(f"note: no run (a folder with config.yaml) under {args.folder}")
    columns = ["run", *args.keys, "iteration", "mIoU", "B-mIoU 5 px"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [str(row[key]) for key in args.keys]
        finished = row["miou"] is not None
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
