"""Command line: ``contextrast <command>``.

Error policy: a bad input (config key or value, missing file, broken dataset) ends in one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

import contextrast
from contextrast import engine
from contextrast.config import CONFIG_DIR, ConfigError, load_config, packaged_configs
from contextrast.contrast import REGION_LOSSES
from contextrast.data import DATASETS, check_dataset
from contextrast.data.inia19 import DEFAULT_SOURCE, ORIENTATIONS, prepare_inia19
from contextrast.evaluation.analysis import (
    boundary_similarity,
    collect_head_inputs,
    plot_curves,
    write_curves,
)
from contextrast.evaluation.evaluator import evaluate
from contextrast.evaluation.metrics import feature_metrics, metrics_json
from contextrast.evaluation.report import (
    comparison_rows,
    format_metrics,
    predict_files,
    save_grid,
)
from contextrast.models import (
    EXPORT_FORMATS,
    GENERIC_PREFIX,
    MODELS,
    ONNX_OPSET,
    export_format,
    export_inference,
    export_onnx,
    writable_path,
)
from contextrast.utils.checkpoint import load_weights
from contextrast.utils.distributed import (
    check_one_launch,
    cleanup,
    init_distributed,
    slurm_environment,
)


def _info(_: argparse.Namespace) -> int:
    rows = [
        ("contextrast", contextrast.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("timm", timm.__version__),
        ("cuda devices", str(torch.cuda.device_count() if torch.cuda.is_available() else 0)),
    ]
    for name, value in rows:
        print(f"{name:<14}{value}")
    return 0


def _models(_: argparse.Namespace) -> int:
    print(f"{'name':<26}{'backbone (timm)':<22}head")
    for name in sorted(MODELS):
        builder = MODELS[name]
        print(f"{name:<26}{builder.args[0]:<22}{builder.keywords['head']}")
    print(f"{GENERIC_PREFIX + '<timm name>':<26}{'any, features_only':<22}hrnetv2 | ocr | aspp")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    kwargs = {"split": args.split}
    if not DATASETS[args.dataset].builtin:
        if not args.root:
            raise ValueError(f"--root is required for dataset {args.dataset!r}")
        kwargs["root"] = args.root
    elif args.root:
        raise ValueError(
            f"--root: the built-in dataset {args.dataset!r} has its own location; drop --root "
            "(or use --dataset folder for a folder of your own)"
        )
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    report = check_dataset(args.dataset, **kwargs)
    for problem in report.problems:
        print(problem)
    for note in report.notes:  # what training will do with some files (not problems)
        print(f"note: {note}")
    where = args.root if args.root else args.dataset
    if not report.problems:
        print(f"{where} [{args.split}]: {report.samples} samples, no problems")
        return 0
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(report.counts.items()))
    print(
        f"{where} [{args.split}]: {report.samples} samples checked, "
        f"{len(report.problems)} problems: {summary}"
    )
    return 1


def _prepare(args: argparse.Namespace) -> int:
    try:
        splits = prepare_inia19(args.out, args.source, args.orientations)
    except (RuntimeError, OSError) as error:  # nibabel missing; --out not writable
        print(f"contextrast prepare: error: {error}", file=sys.stderr)
        return 2
    for s in splits:
        line = f"{Path(args.out) / s.orientation}: {s.train} train, {s.val} val slices"
        if s.removed:
            line += f" ({s.removed} slice files of an earlier build removed)"
        print(line)
        if s.foreign:
            shown = ", ".join(str(p) for p in s.foreign[:3]) + (", ..." if s.foreign[3:] else "")
            print(f"note: kept {len(s.foreign)} files that prepare did not write: {shown}")
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.accept_changes and not args.resume:
        raise ConfigError(
            "--accept-changes: only with --resume (it accepts a resumed run's changes)"
        )
    config = load_config(args.config, args.set)
    trainer = None

    def terminated(signum: int, _frame) -> None:
        # Schedulers (SLURM, Kubernetes) pre-empt with SIGTERM, people press Ctrl-C: a
        # started run finishes its step and writes last.pt first; before that, or at a
        # second signal, stop at once (the last checkpoint written stays). All are logged.
        name = signal.Signals(signum).name
        if trainer is None or trainer.stop_requested:
            raise KeyboardInterrupt(name)
        trainer.request_stop(name)

    previous = {sig: signal.signal(sig, terminated) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            trainer = engine.Trainer(config, resume=args.resume, accept_changes=args.accept_changes)
        except Exception as error:
            # A run directory that already has a log (--resume) keeps the reason it did
            # not start; a new run stopped by its config leaves nothing behind.
            log = config.run_dir / "train.log"
            if log.is_file():
                with open(log, "a") as handle:
                    handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} not started: {error}\n")
            raise
        metrics = trainer.fit()
    finally:
        cleanup()
        for sig, handler in previous.items():  # a caller's own handlers (pytest, notebooks)
            signal.signal(sig, handler)
    if metrics:
        print(f"final mIoU {metrics['miou']:.4f}; run directory {config.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    if args.out and Path(args.out).is_dir():  # found before the evaluation, not after
        raise ValueError(f"--out {args.out} is a folder; name a .json file in it")
    if args.out:
        writable_path(args.out)
    dist = init_distributed(config.run.device)
    try:
        dataset = engine.build_split(config, args.split or config.data.val_split, train=False)
        run = engine.load_run(args.checkpoint, config, num_classes=dataset.num_classes)
        metrics = evaluate(
            run.model.to(dist.device),
            dataset,
            # the training split's pixels per class, as the run counted them
            engine.build_evaluator(config, dataset, run.state.get("class_pixels")),
            dist.device,
            **engine.eval_options(config),
            rank=dist.rank,
            world=dist.world_size,
        )
    finally:
        cleanup()
    if dist.is_main:
        metrics["checkpoint"] = str(args.checkpoint)
        split = args.split or config.data.val_split
        out = Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{split}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(metrics_json(metrics, indent=2) + "\n")
        print(format_metrics(metrics))
        print(f"wrote {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    # predict reads only the test protocol and the input normalisation from the config; the
    # model keys are checked against the checkpoint (load_run). Anything else (the dataset,
    # its root, training) would be silently ignored: refuse it.
    used = ["eval.mode", "eval.crop_size", "eval.stride", "eval.scales", "eval.flip"]
    used += ["model.mean", "model.std"]
    checked = ["model.name", "model.head", "model.head_width", "model.aux"]
    for item in args.set:
        key = item.split("=", 1)[0].strip()
        if "=" in item and key not in used + checked:
            raise ValueError(
                f"--set {key}: predict does not use it (the checkpoint fixes the dataset, its "
                f"classes and the training); it takes {', '.join(used)}, and "
                f"{', '.join(checked)} only as the checkpoint has them"
            )
    run = engine.load_run(args.checkpoint, overrides=args.set)
    c = run.config
    written = predict_files(
        run.model,
        run.palette,
        args.inputs,
        Path(args.out),
        c.model.mean,
        c.model.std,
        **engine.predict_options(c),
    )
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    # The format follows --out's suffix; checked with the path before the checkpoint loads.
    out = Path(args.out)
    if out.suffix.lower() not in EXPORT_FORMATS:
        export_format(out)  # raises: an unknown suffix, or none
    fmt = export_format(out, args.format)  # raises when --format contradicts the suffix
    writable_path(out)
    if args.size and not all(1 <= side <= 16384 for side in args.size):
        raise ValueError(f"--size {args.size[0]} {args.size[1]}: expected H W from 1 to 16384")
    run = engine.load_run(args.checkpoint, overrides=args.set)
    height, width = args.size if args.size else run.config.data.crop_size
    example = torch.zeros(1, 3, height, width)
    if fmt == "onnx":
        path = export_onnx(run.model, out, example)
        print(
            f"wrote {path} (inference model only; ONNX opset {ONNX_OPSET}, input 'images' "
            "(B, 3, H, W) with any batch and any H, W (padded inside to a multiple of 32, "
            "as predict does), output 'logits')"
        )
        return 0
    path = export_inference(run.model, out, example)
    print(f"wrote {path} (inference model only; load with torch.export.load(path).module())")
    return 0


def _configs(_: argparse.Namespace) -> int:
    for name in packaged_configs():
        print(name)
    print(f"\n{len(packaged_configs())} configs in {CONFIG_DIR}; pass a name or a path to train")
    return 0


def _losses(_: argparse.Namespace) -> int:
    for name, text in engine.LOSS_DESCRIPTIONS.items():
        print(f"{name:<17}{text}")
    print(
        "\nchoose one with --set loss.name=NAME; its options are under loss.<section> in a config"
    )
    print("\nregion terms, added to any of them (--set loss.region.name=NAME, loss.region.weight):")
    for name, (_, _, text) in REGION_LOSSES.items():
        print(f"{name:<17}{text} (segmentation_models_pytorch's)")
    return 0


def _analysis_run(args: argparse.Namespace):
    """The run (config from --config or the checkpoint) and the dataset split to analyse."""
    config = load_config(args.config, args.set) if args.config else None
    run = engine.load_run(args.checkpoint, config, overrides=args.set)
    dataset = engine.build_split(run.config, args.split or run.config.data.val_split, train=False)
    if dataset.num_classes != len(run.classes):
        engine.check_compatible(run.state, args.checkpoint, run.config, dataset.num_classes)
    return run, dataset


def _analyze_features(args: argparse.Namespace) -> int:
    run, dataset = _analysis_run(args)
    embeddings, labels = collect_head_inputs(
        run.model, dataset, per_class=args.per_class, max_images=args.max_images, seed=args.seed
    )
    metrics = feature_metrics(embeddings, labels)
    metrics.update({"pixels": int(labels.numel()), "classes": int(labels.unique().numel())})
    print(
        " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    )
    if args.out:
        Path(args.out).write_text(metrics_json(metrics, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _analyze_boundary(args: argparse.Namespace) -> int:
    run, dataset = _analysis_run(args)
    if run.config.loss.name != "contextrast" or not run.state["contrast"]:
        raise ValueError(
            f"checkpoint {args.checkpoint}: the Fig. 5 analysis needs a Contextrast run's "
            f"projection heads; this run used loss.name={run.config.loss.name!r}"
        )
    contrast = engine.build_contrast(run.config, dataset.num_classes, run.model.feature_channels)
    load_weights(contrast, run.state["contrast"], args.checkpoint, "contextrast loss")
    curves = boundary_similarity(run.model, contrast, dataset, args.max_distance, args.max_images)
    out = Path(args.out)
    csv_path = write_curves(curves, out / "boundary_similarity.csv")
    plot_curves(curves, out / "boundary_similarity.png", f"{run.config.run.name}")
    for layer, curve in enumerate(curves, start=1):
        shown = " ".join(f"{v:.3f}" for v in curve["similarity"])
        print(f"layer {layer}: {shown}")
    print(f"wrote {csv_path} and .png")
    return 0


def _analyze_grid(args: argparse.Namespace) -> int:
    if args.scale < 1:
        raise ValueError(f"--scale: must be >= 1, got {args.scale}")
    if Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: the grid is written as PNG; give a .png file")
    runs = [engine.load_run(path) for path in args.checkpoints]
    config = runs[0].config
    dataset = engine.build_split(config, args.split or config.data.val_split, train=False)
    indices = args.indices or range(min(args.count, len(dataset)))
    outside = [i for i in indices if not 0 <= i < len(dataset)]
    if outside or not indices:
        raise ValueError(
            f"--indices/--count: need image indices in [0, {len(dataset)}), got "
            f"{outside or list(indices)}"
        )
    for path, run in zip(args.checkpoints[1:], runs[1:]):
        if run.classes != runs[0].classes:
            raise ValueError(
                f"checkpoint {path} was trained on other classes than {args.checkpoints[0]} "
                f"({len(run.classes)} vs {len(runs[0].classes)}): one grid compares models "
                "of one dataset"
            )
    models = [(r.model, r.palette, engine.predict_options(r.config)) for r in runs]
    names = [r.config.run.name for r in runs]
    if len(set(names)) < len(names) or not all(names):
        names = [str(path) for path in args.checkpoints]  # tells the columns apart
    titles = ["image", "ground truth", *names]
    legend = list(zip(runs[0].classes, runs[0].palette))
    rows = comparison_rows(models, dataset, indices)
    path = save_grid(rows, Path(args.out), scale=args.scale, titles=titles, legend=legend)
    print(f"wrote {path} (image | ground truth | " + " | ".join(map(str, args.checkpoints)) + ")")
    return 0


def _analyze_sweep(args: argparse.Namespace) -> int:
    base = load_config(args.config, args.set)
    rows = engine.sweep(args.config, args.param, args.values, args.set)
    print(
        f"\n| {args.param} | mIoU | "
        + " | ".join(f"B-mIoU {w} px" for w in base.eval.boundary_widths)
        + " |"
    )
    print("|---" * (2 + len(base.eval.boundary_widths)) + "|")
    for r in rows:
        bands = " | ".join(f"{v * 100:.2f}" for v in r["boundary_miou"].values())
        print(f"| {r['value']} | {r['miou'] * 100:.2f} | {bands} |")
    out = Path(args.out) if args.out else base.run_dir.parent / f"{base.run.name}_sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"param": args.param, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


#: ``--set``, as every command that reads a config takes it
_OVERRIDES = {
    "action": "append",
    "default": [],
    "metavar": "KEY=VALUE",
    "help": "override a config value, e.g. --set optim.lr=0.02 (repeatable)",
}
_LAUNCHER = {
    "choices": ["torchrun", "slurm"],
    "default": "torchrun",
    "help": "torchrun: read torchrun's variables (one process without them); slurm: one "
    "process per srun task, process group from SLURM's variables",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contextrast",
        description="Contextual contrastive learning (Contextrast) for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=contextrast.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_listings,
        _add_data_commands,
        _add_train,
        _add_eval,
        _add_predict,
        _add_export,
        _add_analyses,
    ):
        add(commands)
    return parser


def _add_listings(commands: argparse._SubParsersAction) -> None:
    """info, models, losses, configs: what is installed and packaged."""
    info = commands.add_parser("info", help="print versions and available devices")
    info.set_defaults(handler=_info)
    models = commands.add_parser("models", help="list the segmentation model presets")
    models.set_defaults(handler=_models)
    losses = commands.add_parser("losses", help="list the contrastive losses (loss.name)")
    losses.set_defaults(handler=_losses)
    configs = commands.add_parser("configs", help="list the packaged configs")
    configs.set_defaults(handler=_configs)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    """check-data and prepare: the datasets before any training."""
    check = commands.add_parser(
        "check-data",
        help="scan a dataset and report every problem at once, with counts",
        description="Scan a dataset and report every problem at once (exit 1 if any).",
    )
    check.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    check.add_argument("--root", help="dataset root folder (not for the built-in digits, inia19)")
    check.add_argument("--split", default="train")
    check.add_argument("--num-classes", type=int, help="folder / pascal_context class count")
    check.set_defaults(handler=_check_data)

    prepare = commands.add_parser(
        "prepare",
        help="build a benchmark dataset from files on this machine",
        description="Build the INIA19 slice benchmark (folder layout, one folder per "
        "orientation) from Debian's mricron-data volumes; needs nibabel.",
    )
    prepare.add_argument("dataset", choices=["inia19"])
    prepare.add_argument("--out", default="data/inia19", help="output folder")
    prepare.add_argument(
        "--source", default=str(DEFAULT_SOURCE), help="folder with the INIA19 .nii.gz files"
    )
    prepare.add_argument(
        "--orientations", nargs="+", default=list(ORIENTATIONS), choices=list(ORIENTATIONS)
    )
    prepare.set_defaults(handler=_prepare)


def _add_train(commands: argparse._SubParsersAction) -> None:
    """train: a config, its overrides, resume and the launcher."""
    train = commands.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train from a YAML config (torchrun or srun for several processes).",
    )
    train.add_argument("config", help="YAML config: a path or a packaged name (cityscapes/...yaml)")
    train.add_argument("--set", **_OVERRIDES)
    train.add_argument("--resume", action="store_true", help="continue from <run dir>/last.pt")
    train.add_argument(
        "--accept-changes",
        action="store_true",
        help="with --resume: continue although settings that change what is trained (the "
        "loss, augmentations, batch, seed) differ from the checkpoint's",
    )
    train.add_argument("--launcher", **_LAUNCHER)
    train.set_defaults(handler=_train)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    """eval: a checkpoint under the config's test protocol."""
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on the validation split",
        description="Evaluate a checkpoint with the config's protocol; prints and writes JSON.",
    )
    evaluate.add_argument("config")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--split", help="dataset split (default: data.val_split)")
    evaluate.add_argument("--out", help="metrics JSON (default: next to the checkpoint)")
    evaluate.add_argument("--set", **_OVERRIDES)
    evaluate.add_argument("--launcher", **_LAUNCHER)
    evaluate.set_defaults(handler=_eval)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    """predict: coloured masks and overlays of image files."""
    predict = commands.add_parser(
        "predict",
        help="segment images: coloured masks and overlays",
        description="Segment images with a checkpoint; writes NAME_mask.png and NAME_overlay.png.",
    )
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--set", **_OVERRIDES)
    predict.set_defaults(handler=_predict)


def _add_export(commands: argparse._SubParsersAction) -> None:
    """export: the inference model as .pt2 or ONNX."""
    export = commands.add_parser(
        "export",
        help="export the inference model (torch.export .pt2 or ONNX)",
        description="Export the inference model of a checkpoint; no projection or aux head.",
    )
    export.add_argument("--checkpoint", required=True)
    export.add_argument(
        "--out", required=True, help="output file: NAME.pt2 or NAME.onnx (sets the format)"
    )
    export.add_argument(
        "--format",
        choices=["pt2", "onnx"],
        help=f"pt2: torch.export program; onnx: ONNX opset {ONNX_OPSET} (default: from "
        "--out's suffix; must agree with it)",
    )
    export.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example size")
    export.add_argument("--set", **_OVERRIDES)
    export.set_defaults(handler=_export)


def _add_analyses(commands: argparse._SubParsersAction) -> None:
    """analyze: the paper's analyses (Tables 5–8, Fig. 4–5)."""
    analyze = commands.add_parser(
        "analyze", help="the paper's analyses: features, boundary-similarity, grid, sweep"
    )
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True)
    common.add_argument("--config", help="config (default: the one saved in the checkpoint)")
    common.add_argument("--split", help="dataset split (default: data.val_split)")
    common.add_argument("--max-images", type=int, help="analyse the first N images only")
    common.add_argument("--set", **_OVERRIDES)
    features = analyses.add_parser(
        "features", parents=[common], help="A, U, U_3, U_5 of the head inputs (Table 5)"
    )
    features.add_argument("--per-class", type=int, default=1000, help="pixels sampled per class")
    features.add_argument("--seed", type=int, default=0)
    features.add_argument("--out", help="JSON file")
    features.set_defaults(handler=_analyze_features)
    boundary = analyses.add_parser(
        "boundary-similarity",
        parents=[common],
        help="error-pixel / anchor similarity against edge distance (Fig. 5)",
    )
    boundary.add_argument("--max-distance", type=int, default=10)
    boundary.add_argument("--out", required=True, help="output folder (CSV + PNG)")
    boundary.set_defaults(handler=_analyze_boundary)
    grid = analyses.add_parser("grid", help="qualitative grid of several checkpoints (Fig. 4)")
    grid.add_argument("--checkpoints", nargs="+", required=True)
    grid.add_argument("--split")
    grid.add_argument("--count", type=int, default=6, help="first N images")
    grid.add_argument("--indices", type=int, nargs="*", help="these images instead")
    grid.add_argument("--scale", type=int, default=2, help="pixel magnification")
    grid.add_argument("--out", required=True, help="PNG file")
    grid.set_defaults(handler=_analyze_grid)
    sweep = analyses.add_parser(
        "sweep",
        help="train one config per value of a key (Tables 6–8)",
        description="e.g. --param loss.contrast.w_high --values 0 0.3 0.5 0.7 1 (Table 7), "
        "--param loss.contrast.bane_ratio --values 0 0.1 0.3 0.5 0.7 1 (Table 8).",
    )
    sweep.add_argument("config")
    sweep.add_argument("--param", required=True, help="dotted config key")
    sweep.add_argument("--values", nargs="+", required=True)
    sweep.add_argument("--out", help="JSON file with the table")
    sweep.add_argument("--set", **_OVERRIDES)
    sweep.set_defaults(handler=_analyze_sweep)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "launcher", None) == "slurm":
            os.environ.update(slurm_environment(os.environ))
        elif getattr(args, "launcher", None) == "torchrun":
            check_one_launch(os.environ)
        return args.handler(args)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as error:
        print(f"contextrast {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        saved = getattr(error, "saved", None)
        print(
            f"contextrast {args.command}: interrupted ({str(error) or 'SIGINT'})"
            + (f"; {saved}" if saved else "")
            + ("; continue with --resume" if args.command == "train" else ""),
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
