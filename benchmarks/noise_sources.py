"""Where the noise of a paired accuracy comparison comes from: the validation slices or the
training run.

    python benchmarks/noise_sources.py --runs runs/bench_inia19 \\
        --result benchmarks/results/inia19_coronal_region.json \\
        --methods ce+lovasz contextrast contextrast+lovasz --seeds 0 1 2

The run folders are the ones the ``accuracy.py`` result names (its ``runs``: each folder ends
in the key of the run's resolved config), so the runs read are exactly the table's.

For every seed, the last checkpoint of each method and of CE (the trained weights and, when
the run kept one, the moving average) predicts every validation image once; the per-image
confusion matrices then give, without further training:

- the spread of the paired Δ mIoU over seeds (what a comparison of n seeds has to beat, as
  ``accuracy.py --noise`` prints it), and
- the part of it that the finite validation set explains: the standard deviation of the
  same seed's Δ over bootstrap resamples of the validation images (1,000 by default).

What the bootstrap does not explain is training noise: initial head weights, batch order,
augmentation draws and the contrastive loss's random sampling, which a seed changes together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from results_io import check_out, read_accuracy

from contextrast.engine import build_split, load_run
from contextrast.evaluation.inference import predict_probabilities
from contextrast.evaluation.metrics import confusion_matrix, mean_iou


def per_image_confusions(run_dir: Path, weights: str) -> torch.Tensor:
    """(images, N, N) confusion of the run's last checkpoint on its val split."""
    run = load_run(run_dir / "last.pt")
    state = run.state.get(weights)
    if state is None:
        return torch.empty(0)
    run.model.load_state_dict(state)
    data = build_split(run.config, run.config.data.val_split, train=False)
    classes = data.num_classes
    out = []
    with torch.no_grad():
        forward = run.model.inference()
        for index in range(len(data)):
            sample = data[index]
            pred = predict_probabilities(forward, sample.image[None]).argmax(1)[0]
            out.append(confusion_matrix(pred, sample.label, classes))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="the benchmark's run folder")
    parser.add_argument(
        "--result", type=Path, required=True, help="the accuracy.py JSON that names the runs"
    )
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--reference", default="ce")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.out:
        check_out(args.out)
    names = read_accuracy(args.result).get("runs", {})

    def folder(method: str, seed: int) -> Path:
        if f"{method}/{seed}" not in names:
            raise SystemExit(f"--result {args.result}: no run of {method}, seed {seed}")
        return args.runs / names[f"{method}/{seed}"]

    for method in [args.reference, *args.methods]:  # every run named before any is read
        for seed in args.seeds:
            folder(method, seed)

    generator = torch.Generator().manual_seed(0)
    report = {}
    print(f"paired Δ mIoU to {args.reference} (points): spread over seeds vs spread over "
          f"{args.bootstrap} resamples of the val images")  # fmt: skip
    print(f"{'method':<22}{'weights':<8}{'Δ mean':>8}{'sd seeds':>10}{'sd val-set':>12}")
    for weights in ("model", "ema"):
        for method in args.methods:
            deltas, boot_sd = [], []
            for seed in args.seeds:
                a = per_image_confusions(folder(method, seed), weights)
                b = per_image_confusions(folder(args.reference, seed), weights)
                if not a.numel() or not b.numel():
                    break
                deltas.append((mean_iou(a.sum(0)).miou - mean_iou(b.sum(0)).miou) * 100)
                draws = torch.randint(len(a), (args.bootstrap, len(a)), generator=generator)
                boot = [
                    (mean_iou(a[d].sum(0)).miou - mean_iou(b[d].sum(0)).miou) * 100 for d in draws
                ]
                boot_sd.append(statistics.stdev(boot))
            if len(deltas) < 2:
                continue
            row = {
                "delta": deltas,
                "sd_seeds": statistics.stdev(deltas),
                "sd_val_set": statistics.mean(boot_sd),
            }
            report[f"{method}/{weights}"] = row
            shown = "raw" if weights == "model" else "ema"
            print(f"{method:<22}{shown:<8}{statistics.mean(deltas):>+8.2f}"
                  f"{row['sd_seeds']:>10.2f}{row['sd_val_set']:>12.2f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
