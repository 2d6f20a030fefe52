"""Where BANE's dense distance transform stops paying: dense against sparse by map size.

    python benchmarks/edt_crossover.py [--batch 2 --classes 19 --repeats 5]

The loss runs eq. 7 dense (``functional.batched.error_distance``: one label map per image, a
min-plus over every row of a column, W·H² values per map, a fixed number of operations and no host
synchronisation). The sparse form (``functional.distance_transform`` above
``DENSE_EDT_LIMIT``) works on the error pixels alone and stops each as soon as no larger
offset can win, but its work set is data-dependent (host synchronisations on a GPU). For
square-ish maps from 32 × 64 to 256 × 512 (the stride-4 map of a 1024 × 2048 image), with
errors in thin bands (the prediction shifted 2 px: late training) and in blobs (20 px: early
training), this times both on the same error maps (sparse forced by lowering the limit) and
checks that they agree. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from results_io import check_out, write_result

from contextrast.functional import batched as B
from contextrast.functional import class_error_maps, distance_transform
from contextrast.functional.batched import error_distance, error_labels

SIZES = ((32, 64), (64, 128), (128, 256), (256, 512))


def case(kind: str, batch: int, classes: int, height: int, width: int):
    """Blocky ground truth and a prediction equal to it shifted by 2 or 20 px."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(
        0, classes, (batch, 1, max(1, height // 16), max(1, width // 16)), generator=g
    )
    target = F.interpolate(coarse.float(), size=(height, width), mode="nearest")[:, 0].long()
    shift = {"thin": 2, "blob": 20}[kind]
    pred = torch.roll(target, shifts=(shift, shift), dims=(1, 2))
    return pred, target


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/edt_crossover.json")
    args = parser.parse_args()
    check_out(args.out)  # before the measuring, not after it
    rows = []
    print(f"BANE's distance (eq. 7), {args.batch} images, {args.classes} classes, "
          f"{torch.get_num_threads()} threads (ms, median of {args.repeats})")  # fmt: skip
    print(f"{'size':>10} {'errors':>6} {'dense':>9} {'sparse':>9} {'dense/sparse':>13}")
    for height, width in SIZES:
        for kind in ("thin", "blob"):
            pred, target = case(kind, args.batch, args.classes, height, width)
            labels = error_labels(pred, target, args.classes)
            maps = class_error_maps(pred, target, args.classes)

            def dense(labels=labels):
                return error_distance(labels, args.classes)

            def sparse(maps=maps):
                limit = B.DENSE_EDT_LIMIT
                B.DENSE_EDT_LIMIT = 0  # every map takes the sparse form
                try:
                    return distance_transform(maps)
                finally:
                    B.DENSE_EDT_LIMIT = limit

            own = torch.where(maps, sparse(), 0.0).sum(1)  # each error pixel's own class
            assert torch.allclose(dense(), own), (height, width, kind)
            d, s = median_ms(dense, args.repeats), median_ms(sparse, args.repeats)
            share = float((labels < args.classes).float().mean())
            rows.append(dict(height=height, width=width, kind=kind, errors=round(share, 3),
                             dense_ms=round(d, 2), sparse_ms=round(s, 2)))  # fmt: skip
            print(f"{height:>4}x{width:<5} {kind:>6} {d:9.2f} {s:9.2f} {d / s:13.2f}")
    write_result(args.out, "edt_crossover", rows, batch=args.batch, classes=args.classes,
                 threads=torch.get_num_threads())  # fmt: skip


if __name__ == "__main__":
    main()
