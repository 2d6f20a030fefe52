"""Where a training step's time goes: torch.profiler over a few steps of one method.

    python benchmarks/profile_step.py --method contextrast [--device cuda --amp]
        [--model hrnetv2_w18_small --batch 4 --size 256 512]

Runs the same step as ``training_cost.py`` (same model, batch and method table) and prints the
operators with the most self time (device time on CUDA, CPU time otherwise), then the number of
host-device synchronisations per step. Writes the full table to ``--out`` (text).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from results_io import check_out
from torch.profiler import ProfilerActivity, profile
from training_cost import METHODS, batch, build, step

from contextrast import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="contextrast", choices=sorted(METHODS))
    parser.add_argument("--model", default="hrnetv2_w18_small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512])
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/profile_step.txt")
    args = parser.parse_args()
    check_out(args.out)  # before the profiling, not after it

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, args.classes)
    images, labels = batch(args, device)
    net, optimizer = build(args, args.method, model, device)
    for _ in range(2):
        step(net, optimizer, images, labels, args.amp)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step(net, optimizer, images, labels, args.amp)
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = events.table(sort_by=key, row_limit=args.rows)
    title = f"{args.method}: {args.model}, batch {args.batch}, {args.size[0]}x{args.size[1]}"
    lines = [f"{title}, {device}{' bf16' if args.amp else ''}, {args.steps} steps", table]
    if cuda:
        syncs = sum(
            e.count for e in events if e.key in {"cudaStreamSynchronize", "cudaDeviceSynchronize"}
        )
        copies = sum(e.count for e in events if e.key == "cudaMemcpyAsync")
        launches = sum(e.count for e in events if e.key == "cudaLaunchKernel")
        lines.append(
            f"per step: {syncs / args.steps:.0f} synchronisations, {copies / args.steps:.0f} "
            f"memcpy calls, {launches / args.steps:.0f} kernel launches"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
