"""Exact distance transform of BANE: contextrast (torch) against SciPy and OpenCV loops.

Times ``contextrast.functional.distance_transform`` on a batch of class-wise error maps
(default 8 × 19 × 128 × 256, the stride-4 maps of a 512 × 1024 Cityscapes crop) against a
Python loop over the maps calling ``scipy.ndimage.distance_transform_edt`` and
``cv2.distanceTransform(DIST_L2, DIST_MASK_PRECISE)``; checks exactness against SciPy.

Two kinds of error maps: ``thin`` (the prediction is the ground truth shifted by 2 px, so
errors are narrow bands along boundaries, as late in training) and ``blob`` (shifted by
20 px: wide error regions, as early in training). On a CUDA machine the torch timing is also
taken on the GPU (no CPU round trip).

    python benchmarks/distance_transform.py [--height 128 --width 256 --repeats 20]

Prints a table and writes JSON (default ``benchmarks/results/distance_transform.json``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from results_io import check_out, write_result

from contextrast.functional import class_error_maps, distance_transform


def error_maps(kind: str, batch: int, classes: int, height: int, width: int) -> torch.Tensor:
    """Ground truth of random blocky regions; prediction = ground truth shifted."""
    g = torch.Generator().manual_seed(0)
    coarse_shape = (batch, 1, max(1, height // 16), max(1, width // 16))
    coarse = torch.randint(0, classes, coarse_shape, generator=g)
    target = F.interpolate(coarse.float(), size=(height, width), mode="nearest")[:, 0].long()
    shift = {"thin": 2, "blob": 20}[kind]
    pred = torch.roll(target, shifts=(shift, shift), dims=(1, 2))
    return class_error_maps(pred, target, classes)


def timed(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/distance_transform.json")
    args = parser.parse_args()
    check_out(args.out)  # before the measuring, not after it

    import cv2
    from scipy import ndimage

    shape = (args.batch, args.classes, args.height, args.width)
    rows = []
    for kind in ("thin", "blob"):
        masks = error_maps(kind, *shape)
        flat = masks.reshape(-1, args.height, args.width).numpy()
        as_u8 = flat.astype(np.uint8)
        has_false = ~flat.reshape(len(flat), -1).all(axis=1)

        def scipy_loop(flat=flat):
            return np.stack([ndimage.distance_transform_edt(m) for m in flat])

        def cv2_loop(as_u8=as_u8):
            return np.stack(
                [cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) for m in as_u8]
            )

        reference = scipy_loop()
        ours = distance_transform(masks).reshape(len(flat), args.height, args.width).numpy()
        error = float(np.abs(ours - reference)[has_false].max())
        cv2_error = float(np.abs(cv2_loop() - reference)[has_false].max())
        row = {
            "maps": kind,
            "error_pixel_share": round(float(masks.float().mean()), 4),
            "contextrast_cpu_ms": timed(
                lambda masks=masks: distance_transform(masks), args.repeats
            ),
            "scipy_loop_ms": timed(scipy_loop, max(3, args.repeats // 4)),
            "opencv_loop_ms": timed(cv2_loop, args.repeats),
            "max_abs_error_vs_scipy": error,
            "opencv_max_abs_error_vs_scipy": cv2_error,
        }
        if torch.cuda.is_available():
            on_gpu = masks.cuda()
            row["contextrast_cuda_ms"] = timed(
                lambda on_gpu=on_gpu: distance_transform(on_gpu),
                args.repeats,
                sync=torch.cuda.synchronize,
            )
            gpu_result = distance_transform(on_gpu).cpu().reshape(len(flat), *shape[-2:])
            row["cuda_max_abs_error_vs_scipy"] = float(
                np.abs(gpu_result.numpy() - reference)[has_false].max()
            )
        rows.append(row)

    header = f"{'maps':<6}{'errors':>8}{'contextrast':>13}{'opencv':>9}{'scipy':>9}{'max err':>10}"
    print(f"distance transform of {'x'.join(map(str, shape))} error maps (ms, median)")
    print(header + ("  cuda" if torch.cuda.is_available() else ""))
    for r in rows:
        line = (
            f"{r['maps']:<6}{r['error_pixel_share']:>8.3f}{r['contextrast_cpu_ms']:>13.1f}"
            f"{r['opencv_loop_ms']:>9.1f}{r['scipy_loop_ms']:>9.1f}"
            f"{r['max_abs_error_vs_scipy']:>10.1e}"
        )
        if "contextrast_cuda_ms" in r:
            line += f"{r['contextrast_cuda_ms']:>6.2f}"
        print(line)

    write_result(
        args.out,
        "distance_transform",
        rows,
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        opencv=cv2.__version__,
        shape=list(shape),
        repeats=args.repeats,
    )


if __name__ == "__main__":
    main()
