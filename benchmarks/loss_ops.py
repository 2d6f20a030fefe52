"""Operator calls and host syncs of one loss forward + backward (CPU profiler).

    python benchmarks/loss_ops.py [--out benchmarks/results/loss_ops.json]

The case of issue 14: the four features of ``hrnetv2_w18_small`` for a 2×3×256×512 batch, 19
classes, a blocky random target. For each loss — the CE-only reference (CE of the logits
upsampled to the labels), Contextrast with its defaults, its K = 0 form, the paper-literal
reading, and each peer — counts every ``aten::`` event of one forward + backward (nested ones
included) and the host synchronisations among them (``_local_scalar_dense``, which
``.item()``, ``bool()`` and ``int()`` of a tensor end in, and the ops whose output size depends
on the data), and times one forward + backward (median of ``--repeats``, after the profiled
call). Counts are deterministic at a given thread count (``--threads``, default 2: PyTorch
runs the heads' batch-2 1×1 convolutions through a kernel with more sub-operations at one).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from results_io import check_out, write_result
from torch.profiler import ProfilerActivity, profile

from contextrast import (
    ContextrastLoss,
    MultiScaleCrossScaleLoss,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
    create_model,
)

SYNCS = (
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::masked_select",
)
PAPER = {
    "hard_negatives": "only",
    "max_positives": None,
    "max_negatives": None,
    "normalize_anchors": False,
    "embed_dim": 256,
}
LOSSES = {
    "contextrast (default)": lambda n, ch: ContextrastLoss(n, ch),
    "contextrast, validate=False (trainer)": lambda n, ch: ContextrastLoss(n, ch, validate=False),
    "contextrast, K=0": lambda n, ch: ContextrastLoss(n, ch, bane_ratio=0.0),
    "contextrast, paper-literal": lambda n, ch: ContextrastLoss(n, ch, **PAPER),
    "pixel_contrast": lambda n, ch: PixelContrastLoss(n, ch),
    "pixel_contrast_memory": lambda n, ch: PixelContrastMemory(PixelContrastLoss(n, ch)),
    "ms_cs": lambda n, ch: MultiScaleCrossScaleLoss(n, ch),
    "region_contrast": lambda n, ch: RegionContrastLoss(n, ch),
}


def measure(run, repeats: int) -> dict:
    """Aten calls and host syncs of one call of ``run`` after a warm-up call, and the
    median wall time of ``repeats`` more calls (ms)."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = [e.name for e in prof.events() if e.name.startswith("aten::")]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return {
        "calls": len(events),
        "syncs": sum(name in SYNCS for name in events),
        "ms": round(statistics.median(times), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/loss_ops.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    check_out(args.out)  # before the measuring, not after it
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = 19
    model = create_model("hrnetv2_w18_small", classes)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 256, 512))
    features = [f.detach().requires_grad_() for f in out.features]
    channels = [f.shape[1] for f in features]
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, classes, (2, 1, 8, 16), generator=g).float()
    target = F.interpolate(coarse, size=(256, 512), mode="nearest")[:, 0].long()
    logits = out.logits.detach().requires_grad_()

    def cross_entropy():
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        F.cross_entropy(up, target, ignore_index=255).backward()

    rows = [{"loss": "CE only (reference)", **measure(cross_entropy, args.repeats)}]
    for name, make in LOSSES.items():
        loss = make(classes, channels)
        run = lambda loss=loss: loss(features, logits.detach(), target).backward()  # noqa: E731
        rows.append({"loss": name, **measure(run, args.repeats)})
    setting = (
        f"hrnetv2_w18_small features, 2x3x256x512, 19 classes, CPU profiler, {args.threads} threads"
    )
    print(f"one forward + backward; {setting}")
    print(f"{'loss':<30}{'aten calls':>12}{'host syncs':>12}{'fwd+bwd ms':>12}")
    for row in rows:
        print(f"{row['loss']:<30}{row['calls']:>12}{row['syncs']:>12}{row['ms']:>12.1f}")
    write_result(args.out, "loss_ops", rows, setting=setting)


if __name__ == "__main__":
    main()
