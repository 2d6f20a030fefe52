"""The loss's two pair forms (``pair_form="dense"`` / ``"sparse"``) as the classes grow: one
forward + backward of ``ContextrastLoss`` alone, on the same features.

    python benchmarks/pair_forms.py [--classes 10 19 32 59 171] [--threads 1]

The CPU proxy's case: the four feature maps of ``hrnetv2_w18_small`` (18, 36, 72, 144
channels at strides 4–32) for a 4 × 256 × 512 batch, a label map of 32-pixel blocks drawn from
all N classes (so that many classes are present in every layer, as on ADE20K), and logits
that predict the labels shifted by 3 pixels (BANE has error bands to pick from). Defaults of
the loss otherwise. Times are the median of ``--repeats`` calls after two warm-up calls;
which form ``"auto"`` takes at each N is printed beside them. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from results_io import check_out, write_result

from contextrast import ContextrastLoss
from contextrast.functional.loss import SPARSE_FROM_CLASSES

CHANNELS = (18, 36, 72, 144)


def case(classes: int, batch: int, size: tuple[int, int]):
    g = torch.Generator().manual_seed(0)
    h, w = size
    features = [
        torch.randn(batch, c, h >> (2 + i), w >> (2 + i), generator=g).requires_grad_()
        for i, c in enumerate(CHANNELS)
    ]
    blocks = torch.randint(0, classes, (batch, 1, h // 32, w // 32), generator=g).float()
    target = F.interpolate(blocks, size=size, mode="nearest")[:, 0].long()  # (B, H, W)
    shifted = torch.roll(target, 3, dims=2)[:, ::4, ::4]  # (B, H/4, W/4)
    logits = F.one_hot(shifted, classes).permute(0, 3, 1, 2).float()  # (B, N, H/4, W/4)
    return features, logits, target


def seconds(loss: ContextrastLoss, features, logits, target, repeats: int) -> float:
    for _ in range(2):
        loss(features, logits, target).backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss(features, logits, target).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 19, 32, 59, 171])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/pair_forms.json")
    args = parser.parse_args()
    if min(args.classes) < 2:
        parser.error(f"--classes {min(args.classes)}: each count must be >= 2")
    if any(side < 32 or side % 32 for side in args.size):
        parser.error(f"--size {args.size[0]} {args.size[1]}: each side a multiple of 32")
    for name in ("batch", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be >= 1")
    check_out(args.out)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'classes':>7} {'dense s':>9} {'sparse s':>9} {'dense/sparse':>13}  auto")
    for classes in args.classes:
        inputs = case(classes, args.batch, tuple(args.size))
        times = {}
        for form in ("dense", "sparse"):
            torch.manual_seed(0)
            loss = ContextrastLoss(classes, CHANNELS, pair_form=form, validate=False)
            times[form] = seconds(loss, *inputs, args.repeats)
        auto = "sparse" if classes >= SPARSE_FROM_CLASSES else "dense"
        ratio = times["dense"] / times["sparse"]
        print(f"{classes:>7} {times['dense']:>9.3f} {times['sparse']:>9.3f} {ratio:>13.2f}  {auto}")
        rows.append({"classes": classes, "dense_s": times["dense"], "sparse_s": times["sparse"],
                     "dense_over_sparse": ratio, "auto": auto})  # fmt: skip
    write_result(args.out, "pair_forms", rows, batch=args.batch, size=args.size,
                 threads=args.threads, repeats=args.repeats)  # fmt: skip


if __name__ == "__main__":
    main()
