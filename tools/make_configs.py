"""Write configs/: one complete YAML per Table 2 / Table 6 row this codebase trains, plus digits.

    python tools/make_configs.py            # (re)write configs/
    python tools/make_configs.py --check    # exit 1 if configs/ differs from this script

Every file is the full resolved config (every key spelled out), so none inherits from
another. The paper (§4.1) fixes crop, batch, iterations, λ, α, w_h, K and the test protocol;
it does not state the learning rate, weight decay or τ: those are the common HRNet/OCR
Cityscapes values (lr 0.01, wd 5e-4) and the peers' τ = 0.1, marked as such in each file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from contextrast.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1] / "contextrast" / "configs"
MODELS = ("deeplabv3_r101", "hrnetv2_w48", "ocrnet_hrnetv2_w48")
MULTI_SCALE = [0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
DATASETS = {
    # name: crop, global batch, iterations, eval protocol, dataset root
    "cityscapes": {
        "crop_size": [512, 1024],
        "batch_size": 8,
        "iters": 40000,
        "eval": {"mode": "whole", "scales": [1.0], "flip": False, "crop_size": [512, 1024]},
        "root": "data/cityscapes",
    },
    "camvid": {
        # Not stated in the paper; 352 × 480 is the 360 × 480 image cut to a multiple of 32.
        "crop_size": [352, 480],
        "batch_size": 16,
        "iters": 6000,
        "eval": {"mode": "whole", "scales": MULTI_SCALE, "flip": True, "crop_size": [352, 480]},
        "root": "data/CamVid",
    },
    "pascal_context": {
        "crop_size": [512, 512],
        "batch_size": 16,
        "iters": 60000,
        "eval": {"mode": "slide", "scales": MULTI_SCALE, "flip": True, "crop_size": [512, 512]},
        "root": "data/VOCdevkit/VOC2010",
    },
    "coco_stuff": {
        "crop_size": [512, 512],
        "batch_size": 16,
        "iters": 60000,
        "eval": {"mode": "slide", "scales": MULTI_SCALE, "flip": True, "crop_size": [512, 512]},
        "root": "data/coco_stuff164k",
    },
    "ade20k": {
        "crop_size": [512, 512],
        "batch_size": 12,
        "iters": 80000,
        "eval": {"mode": "slide", "scales": MULTI_SCALE, "flip": True, "crop_size": [512, 512]},
        "root": "data/ade/ADEChallengeData2016",
    },
}
SPLITS = {"coco_stuff": ("train2017", "val2017"), "ade20k": ("training", "validation")}

PAPER_HEADER = """\
# {title}
# Paper §4.1: crop {crop}, batch {batch} (global, split over the processes), {iters} iterations,
# SGD momentum 0.9, poly LR power 0.9; λ = (0.1, 0.4, 0.7, 1.0) from layer 1 to 4, α = 0.1,
# w_h = 0.7, K = 50 %; test: {protocol}.
# Not stated in the paper (chosen here): lr 0.01, weight decay 5e-4, τ = 0.1 (the peers').
# Train:   torchrun --nproc_per_node 8 -m contextrast.cli train {path}
# Resume:  the same with --resume.   Evaluate: contextrast eval {path} --checkpoint RUN/best.pt
"""

PP_HEADER = """\
# Contextrast++ (arXiv 2608.22679) instead of the λ above: λ = (0.1, 0.3, 0.7, 1.0) (its
# eq. 5); adaptive anchor fusion, class-balanced anchor memory K_M = 100, L = L_CE +
# α(L_PA + L_AA). Its d = 256 is only implied; the library's default 128 here. Readings:
# docs/method.md.
"""

DIGITS_HEADER = """\
# {title}
# The CPU demo (make demo): real MNIST digits composed into scenes (built in), an
# ImageNet-pretrained EfficientNet-Lite0 encoder with an HRNetV2-style head, 400 iterations.
# model.pretrained is written by `make demo` (python -m contextrast.demo --prepare-weights);
# without it, run with --set model.pretrained=false (from scratch: much lower mIoU).
# Train: contextrast train {path}
"""

INIA19_HEADER = """\
# {title}
# The real-image CPU benchmark: 2-D slices of the INIA19 macaque T1 MRI with 10 classes of its
# NeuroMaps atlas (build with `contextrast prepare inia19`; coronal slices here, set
# data.root=data/inia19/sagittal or .../axial for the others), an ImageNet-pretrained
# EfficientNet-Lite0 encoder with an HRNetV2-style head, fine-tuned
# {schedule}.
# Benchmark: python benchmarks/accuracy.py --config {path}
"""

#: The INIA19 training schedules of the fit curve (docs/benchmarks.md, "The fit curve"):
#: file suffix → (what the header says, optim settings over the SGD 400 ones, eval interval).
ADAMW = {"name": "adamw", "weight_decay": 0.01, "norm_decay_mult": 0.0, "bias_decay_mult": 0.0}
INIA19_SCHEDULES = {
    "": ("400 iterations with SGD (lr 0.01: CE is under-fit)", {}),
    "_sgd_plateau": (
        "with SGD tuned for CE (lr {lr:g}, {iters} iterations; the plateau check: "
        "docs/benchmarks.md)",
        {"lr": 0.16, "iters": 3200},
    ),
    "_adamw": ("400 iterations with AdamW (lr {lr:g})", {**ADAMW, "lr": 0.001}),
    "_adamw_plateau": (
        "with AdamW tuned for CE (lr {lr:g}, {iters} iterations; the plateau check: "
        "docs/benchmarks.md)",
        {**ADAMW, "lr": 0.002, "iters": 1600},
    ),
}


PP = {"layer_weights": [0.1, 0.3, 0.7, 1.0]}
#: extra loss settings per variant (file suffix → (loss.name, loss section settings, title))
VARIANTS = {
    "ce": ("ce", {}, "CE baseline"),
    "contextrast": ("contextrast", {}, "Contextrast (CCL + BANE)"),
    "ms_cs": ("ms_cs", {}, "multi-/cross-scale contrast [31]"),
    "pixel_contrast": (
        "pixel_contrast",
        {"contrast_warmup_iters": 5000, "pixel_contrast": {"memory": True}},
        "pixel contrast with memory bank [41]",
    ),
    "region_contrast": ("region_contrast", {}, "region-aware contrast [17]"),
    "contextrast_ccl": ("contextrast", {"contrast": {"bane_ratio": 0.0}}, "CCL only (Table 6)"),
    "contextrast_ccl_semi_hard": (
        "contextrast",
        {"contrast": {"negatives": "semi_hard"}},
        "CCL + semi-hard negatives (Table 6)",
    ),
    # Contextrast++ (its Table III; λ as its eq. 5 gives them), and Table VIII's ablations
    "contextrast_pp": (
        "contextrast",
        {"contrast": {**PP, "anchor_fusion": "adaptive", "anchor_memory": 100}},
        "Contextrast++ (adaptive fusion + anchor memory)",
    ),
    "contextrast_pp_fusion": (
        "contextrast",
        {"contrast": {**PP, "anchor_fusion": "adaptive"}},
        "Contextrast++ fusion only (its Table VIII)",
    ),
    "contextrast_pp_memory": (
        "contextrast",
        {"contrast": {**PP, "anchor_memory": 100}},
        "Contextrast++ anchor memory only (its Table VIII)",
    ),
    "contextrast_pp_semi_hard": (
        "contextrast",
        {
            "contrast": {
                **PP,
                "anchor_fusion": "adaptive",
                "anchor_memory": 100,
                "negatives": "semi_hard",
            }
        },
        "Contextrast++ with semi-hard negatives (its Table VIII)",
    ),
}
#: which variants each model/dataset gets: the rows of Tables 2 and 6 this codebase trains
ROWS = {
    (dataset, model): ["ce", "contextrast", "ms_cs", "contextrast_pp"]
    for dataset in DATASETS
    for model in MODELS
}
ROWS[("cityscapes", "hrnetv2_w48")] += [
    "pixel_contrast",
    "region_contrast",
    "contextrast_ccl",
    "contextrast_ccl_semi_hard",
    "contextrast_pp_fusion",
    "contextrast_pp_memory",
    "contextrast_pp_semi_hard",
]
ROWS[("camvid", "hrnetv2_w48")] += ["contextrast_ccl", "contextrast_ccl_semi_hard"]


def paper_config(dataset: str, model: str, variant: str) -> dict:
    loss, settings, _ = VARIANTS[variant]
    d = DATASETS[dataset]
    train_split, val_split = SPLITS.get(dataset, ("train", "val"))
    crop_h, crop_w = d["eval"]["crop_size"]
    return {
        "run": {"name": f"{dataset}_{model}_{variant}", "output_dir": "runs", "device": "cuda"},
        "model": {"name": model, "pretrained": True, "aux_weight": 0.4},
        "data": {
            "dataset": dataset,
            "root": d["root"],
            "train_split": train_split,
            "val_split": val_split,
            "crop_size": d["crop_size"],
            "scale_range": [0.5, 2.0],
            "hflip": 0.5,
            "color_jitter": [0.25, 0.25, 0.25, 0.0],
            "batch_size": d["batch_size"],
            "num_workers": 4,
        },
        "loss": {"name": loss, **settings, **_ms_cs_scales(model, loss)},
        "optim": {"lr": 0.01, "weight_decay": 0.0005, "iters": d["iters"]},
        "train": {
            "log_interval": 50,
            "eval_interval": d["iters"] // 10,
            "checkpoint_interval": 1000,
        },
        "eval": {**d["eval"], "stride": [crop_h * 2 // 3, crop_w * 2 // 3]},
    }


def _ms_cs_scales(model: str, loss: str) -> dict:
    # Pissas et al. contrast DeepLabV3's layer1, layer3 and layer4.
    if loss == "ms_cs" and model.startswith("deeplabv3"):
        return {"ms_cs": {"feature_indices": [0, 2, 3], "scale_weights": [1.0, 0.7, 0.4]}}
    return {}


def digits_config(loss: str) -> dict:
    return {
        "run": {"name": f"demo_{loss}", "output_dir": "runs/demo", "device": "cpu", "seed": 0},
        "model": {
            "name": "tu-efficientnet_lite0",
            "head": "hrnetv2",
            "pretrained": ".cache/efficientnet_lite0_timm.pth",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "data": {
            "dataset": "digits",
            "crop_size": [96, 128],
            "scale_range": [0.75, 1.25],
            "hflip": 0.0,
            "color_jitter": [0.2, 0.2, 0.2, 0.0],
            "batch_size": 8,
            "num_workers": 0,
        },
        "loss": {"name": loss},
        "optim": {"lr": 0.03, "weight_decay": 0.0001, "iters": 400},
        "train": {"log_interval": 50, "eval_interval": 400, "checkpoint_interval": 200},
        "eval": {"mode": "whole", "crop_size": [96, 128], "stride": [64, 86]},
    }


def inia19_config(loss: str, schedule: str = "") -> dict:
    config = digits_config(loss)
    config["run"].update(name=f"inia19_{loss}{schedule}", output_dir="runs/inia19")
    config["data"].update(
        dataset="folder",
        root="data/inia19/coronal",
        crop_size=[128, 160],
        hflip=0.5,  # the hemispheres are folded into one class each: a mirror keeps the labels
    )
    config["optim"].update(lr=0.01, weight_decay=0.0005)
    config["optim"].update(INIA19_SCHEDULES[schedule][1])
    # One evaluation, at the end: what the tables read (``final``).
    config["train"].update(eval_interval=config["optim"]["iters"])
    config["eval"].update(crop_size=[128, 160], stride=[86, 106])
    return config


class _Dumper(yaml.SafeDumper):
    """Mappings as blocks, lists of numbers inline."""


_Dumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True),
)


def render(data: dict, header: str) -> str:
    resolved = config_from_dict(data).to_dict()  # every key, validated
    body = yaml.dump(resolved, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    return header + body


def files() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for dataset, d in DATASETS.items():
        protocol = (
            "single scale" if d["eval"]["scales"] == [1.0] else "multi-scale 0.75–2.0 + flip"
        ) + f", {d['eval']['mode']}"
        for model in MODELS:
            for variant in ROWS[(dataset, model)]:
                path = ROOT / dataset / f"{model}_{variant}.yaml"
                title = f"{model} + {VARIANTS[variant][2]} on {dataset}"
                header = PAPER_HEADER.format(
                    title=title,
                    crop="×".join(map(str, d["crop_size"])),
                    batch=d["batch_size"],
                    iters=d["iters"],
                    protocol=protocol,
                    path=path.relative_to(ROOT.parent),
                )
                if variant.startswith("contextrast_pp"):
                    header += PP_HEADER
                out[path] = render(paper_config(dataset, model, variant), header)
    for loss in ("ce", "contextrast"):
        path = ROOT / "digits" / f"{loss}.yaml"
        title = f"digits demo: {'CE baseline' if loss == 'ce' else 'Contextrast'}"
        header = DIGITS_HEADER.format(title=title, path=path.relative_to(ROOT.parent))
        out[path] = render(digits_config(loss), header)
        for schedule, (words, _) in INIA19_SCHEDULES.items():
            path = ROOT / "inia19" / f"{loss}{schedule}.yaml"
            title = f"INIA19 slices: {'CE baseline' if loss == 'ce' else 'Contextrast'}"
            data = inia19_config(loss, schedule)
            header = INIA19_HEADER.format(
                title=title,
                path=path.relative_to(ROOT.parent),
                schedule=words.format(**data["optim"]),
            )
            out[path] = render(data, header)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    stale = []
    for path, text in files().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date: " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
