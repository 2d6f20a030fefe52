"""Inference cost: the exported model of a Contextrast run against the CE baseline's.

    python benchmarks/inference_cost.py [--checkpoints CE.pt CONTEXTRAST.pt] [--size 512 1024]

(default: the ``best.pt`` of ``make demo``'s CE and Contextrast runs on inia19).

Each checkpoint's inference model is exported with ``torch.export`` (``contextrast export``),
loaded back, and timed on the same input, interleaved over rounds (median). Parameters are
counted in the exported program. Training with the contrastive loss must add nothing: equal
parameters, equal latency. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_io import check_out

from contextrast.config import config_from_dict
from contextrast.demo import method_config
from contextrast.engine.builders import build_model
from contextrast.models import export_inference
from contextrast.utils.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=[
            str(method_config("inia19", m, []).run_dir / "best.pt") for m in ("ce", "contextrast")
        ],
    )
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/inference_cost.json")
    args = parser.parse_args()
    check_out(args.out)  # before the measuring, not after it
    programs = {}
    with tempfile.TemporaryDirectory() as folder:
        for path in args.checkpoints:
            state = load_checkpoint(path)
            config = config_from_dict(state["config"])
            model = build_model(config, len(state["classes"]), pretrained=False)
            model.load_state_dict(state["model"])
            exported = export_inference(
                model, Path(folder) / "m.pt2", torch.zeros(1, 3, *args.size)
            )
            program = torch.export.load(exported)
            params = sum(p.numel() for p in program.module().parameters())
            training = sum(v.numel() for v in state["model"].values() if v.is_floating_point())
            extra = sum(v.numel() for v in state["contrast"].values() if v.is_floating_point())
            programs[path] = {"module": program.module(), "parameters": params,
                              "loss_module_parameters": extra, "model_tensors": training,
                              "loss": config.loss.name}  # fmt: skip
    images = torch.randn(1, 3, *args.size)
    times = {path: [] for path in programs}
    with torch.no_grad():
        for entry in programs.values():
            entry["module"](images)  # warm-up
        for _ in range(args.rounds):
            for path, entry in programs.items():
                start = time.perf_counter()
                entry["module"](images)
                times[path].append(time.perf_counter() - start)
    print(
        f"exported inference model, 1x3x{args.size[0]}x{args.size[1]}, CPU, median of {args.rounds}"
    )
    print(f"{'checkpoint':<42}{'loss':<13}{'params':>10}{'ms':>9}{'dropped (loss heads)':>22}")
    rows = []
    for path, entry in programs.items():
        ms = statistics.median(times[path]) * 1e3
        print(
            f"{path:<42}{entry['loss']:<13}{entry['parameters']:>10}{ms:>9.1f}"
            f"{entry['loss_module_parameters']:>22}"
        )
        rows.append(
            {
                "checkpoint": path,
                "loss": entry["loss"],
                "parameters": entry["parameters"],
                "median_ms": ms,
                "loss_module_parameters": entry["loss_module_parameters"],
            }
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "inference_cost",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "size": args.size, "rounds": args.rounds, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
