"""Training cost of each loss on the same model and input: step time and peak memory.

    python benchmarks/training_cost.py [--model hrnetv2_w18_small --batch 4 --size 256 512]
    python benchmarks/training_cost.py --methods ce contextrast --compile inductor

Every method trains the same model (same initial weights) on the same batch: CE only,
Contextrast, its semi-hard ablation, and each peer loss. Step times (forward, backward, SGD
step) are measured interleaved — one step of each method per round — so that drift of the
machine affects all methods alike; the median over rounds is reported with its ratio to CE,
and the median of the per-round ratios to CE's step of the same round ("paired"), which is
the steadier of the two on a machine whose speed drifts between steps.
Peak memory: on CUDA the rise of ``max_memory_allocated`` over what is allocated before a
step of the method; on the CPU (Linux) each method runs
in a fresh subprocess: after one step, the peak-RSS mark is reset and the rise of the peak over
the resident memory during two more steps is reported (activations and temporaries of a step).
Prints a table and writes JSON (``benchmarks/results/training_cost.json``). Without ``ce``
among ``--methods`` there is no reference: the ratios print as "—" and are written as null.
Every argument (``--out``, a ``tu-`` model's timm name too) is checked before any measuring.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from results_io import check_out, shown, write_result

from contextrast import (
    ContextrastLoss,
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
    create_model,
)
from contextrast.engine.trainer import TrainingModule
from contextrast.models import GENERIC_PREFIX, MODELS

METHODS = {
    "ce": lambda n, ch: None,
    # validate=False: as the trainer runs it (labels checked once, no per-step host sync).
    "contextrast": lambda n, ch: ContextrastLoss(n, ch, validate=False),
    # its two pair forms forced (the default is dense)
    "contextrast_dense": lambda n, ch: ContextrastLoss(n, ch, pair_form="dense", validate=False),
    "contextrast_sparse": lambda n, ch: ContextrastLoss(n, ch, pair_form="sparse", validate=False),
    "contextrast_semi_hard": lambda n, ch: ContextrastLoss(
        n, ch, negatives="semi_hard", validate=False
    ),
    # Contextrast++ (issue 30): its two parts alone and together
    "contextrast_pp": lambda n, ch: ContextrastLoss(
        n, ch, anchor_fusion="adaptive", anchor_memory=100, validate=False
    ),
    "contextrast_pp_fusion": lambda n, ch: ContextrastLoss(
        n, ch, anchor_fusion="adaptive", validate=False
    ),
    "contextrast_pp_memory": lambda n, ch: ContextrastLoss(
        n, ch, anchor_memory=100, validate=False
    ),
    "pixel_contrast": lambda n, ch: PixelContrastLoss(n, ch),
    "pixel_contrast_memory": lambda n, ch: PixelContrastMemory(PixelContrastLoss(n, ch)),
    "ms_cs": lambda n, ch: MultiScaleCrossScaleLoss(n, ch),
    "region_contrast": lambda n, ch: RegionContrastLoss(n, ch),
}


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and a blocky label map (regions of 32 px) with boundaries everywhere."""
    g = torch.Generator().manual_seed(0)
    height, width = args.size
    images = torch.randn(args.batch, 3, height, width, generator=g)
    coarse = torch.randint(0, args.classes, (args.batch, 1, height // 32, width // 32), generator=g)
    labels = F.interpolate(coarse.float(), size=(height, width), mode="nearest")[:, 0].long()
    return images.to(device), labels.to(device)


def build(args: argparse.Namespace, method: str, model: torch.nn.Module, device: torch.device):
    """``method`` with the suffix "+compile" compiles the model (``--compile`` backend) in
    place, as ``optim.compile`` does; the loss stays eager."""
    name, compiled = method.removesuffix("+compile"), method.endswith("+compile")
    model = copy.deepcopy(model)
    if compiled:
        model.compile(backend=args.compile)
    net = TrainingModule(model, METHODS[name](args.classes, model.feature_channels)).to(device)
    return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)


def step(net, optimizer, images, labels, amp) -> None:
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        terms = net(images, labels)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()


def peak_memory_child(args: argparse.Namespace, method: str) -> float:
    """MiB of peak resident memory a CPU step of ``method`` adds to the model alone."""
    command = [sys.executable, __file__, "--child", method, "--model", args.model,
               "--batch", str(args.batch), "--size", *map(str, args.size),
               "--classes", str(args.classes), "--compile", args.compile or ""]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = create_model(args.model, args.classes)
    images, labels = batch(args, device)
    net, optimizer = build(args, args.child, model, device)
    step(net, optimizer, images, labels, amp=False)  # allocate the optimiser state first
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    for _ in range(2):
        step(net, optimizer, images, labels, amp=False)
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument checked before any work, each in one line."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods {unknown[0]!r}: choose from {list(METHODS)}")
    if not args.methods:
        parser.error("--methods: give at least one method")
    for name, value, least in (("--batch", args.batch, 2), ("--rounds", args.rounds, 1),
                               ("--classes", args.classes, 2)):  # fmt: skip
        if value < least:
            why = " (BatchNorm needs two images)" if name == "--batch" else ""
            parser.error(f"{name} {value}: must be >= {least}{why}")
    if any(side < 32 or side % 32 for side in args.size):
        parser.error(f"--size {args.size[0]} {args.size[1]}: each side a multiple of 32 "
                     "(the encoder's largest stride)")  # fmt: skip
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device {args.device!r}: expected cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    if args.model not in MODELS and not args.model.startswith(GENERIC_PREFIX):
        parser.error(f"--model {args.model!r}: choose from {sorted(MODELS)} or "
                     f"'{GENERIC_PREFIX}<timm backbone>'")  # fmt: skip
    backbone = args.model.removeprefix(GENERIC_PREFIX)
    if args.model.startswith(GENERIC_PREFIX) and not timm.is_model(backbone):
        parser.error(f"--model {args.model!r}: timm has no backbone {backbone!r} "
                     "(see timm.list_models())")  # fmt: skip
    if not args.child:  # the child writes nothing
        check_out(args.out)
    if args.compile:
        from torch import _dynamo

        backends = _dynamo.list_backends(exclude_tags=())
        if args.compile not in backends:
            parser.error(f"--compile {args.compile!r}: choose from {backends}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hrnetv2_w18_small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512])
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", default="benchmarks/results/training_cost.json")
    parser.add_argument(
        "--compile",
        metavar="BACKEND",
        help="add a '+compile' row per method: the model compiled with this torch.compile "
        "backend (e.g. inductor)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_arguments(parser, args)
    if args.child:
        return child(args)
    if args.compile:
        args.methods = [*args.methods, *(f"{m}+compile" for m in args.methods)]

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, args.classes)
    images, labels = batch(args, device)
    nets = {m: build(args, m, model, device) for m in args.methods}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for net, optimizer in nets.values():  # warm-up
        step(net, optimizer, images, labels, args.amp)
    for _ in range(args.rounds):
        for method, (net, optimizer) in nets.items():
            sync()
            start = time.perf_counter()
            step(net, optimizer, images, labels, args.amp)
            sync()
            times[method].append(time.perf_counter() - start)
    memory = {}
    for method, (net, optimizer) in nets.items():
        if device.type == "cuda":
            # All methods' models live on the device at once: report what this method's step
            # adds on top of what is allocated before it (activations and temporaries), as on
            # the CPU, so that the other methods' weights do not dilute the ratio.
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step(net, optimizer, images, labels, args.amp)
            memory[method] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        else:
            memory[method] = peak_memory_child(args, method)
    base_time = statistics.median(times["ce"]) if "ce" in times else None
    rows = []
    for method in args.methods:
        seconds = statistics.median(times[method])
        paired = (
            statistics.median(t / c for t, c in zip(times[method], times["ce"]))
            if "ce" in times
            else None
        )
        rows.append({
            "method": method,
            "seconds_per_step": seconds,
            "time_ratio_to_ce": seconds / base_time if base_time else None,
            "paired_time_ratio_to_ce": paired,
            "peak_memory_mib": memory[method],
            "memory_ratio_to_ce": memory[method] / memory["ce"] if memory.get("ce") else None,
        })  # fmt: skip
    what = "peak added (MiB, CUDA)" if device.type == "cuda" else "peak RSS added (MiB)"
    title = (
        f"{args.model}, batch {args.batch}, {args.size[0]}x{args.size[1]}, {args.classes} classes"
    )
    print(f"training step cost: {title}, {device}{' bf16' if args.amp else ''}")
    print(f"{'method':<24}{'s/step':>8}{'x CE':>7}{'paired':>8}{what:>26}{'x CE':>7}")
    for r in rows:
        time_ratio, paired, memory_ratio = (
            shown(r[key], missing="—")  # None without a ce row
            for key in ("time_ratio_to_ce", "paired_time_ratio_to_ce", "memory_ratio_to_ce")
        )
        print(
            f"{r['method']:<24}{r['seconds_per_step']:>8.3f}{time_ratio:>7}{paired:>8}"
            f"{r['peak_memory_mib']:>26.0f}{memory_ratio:>7}"
        )
    write_result(
        args.out,
        "training_cost",
        rows,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        setting=title,
        rounds=args.rounds,
        seconds_per_round=times,
    )


if __name__ == "__main__":
    main()
