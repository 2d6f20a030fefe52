"""Command line: ``contextrast <command>``.

Error policy: a bad input (config key or value, missing file, broken dataset) ends in one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import contextrast


def _info(_: argparse.Namespace) -> int:
    import timm
    import torch

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
    from contextrast.models import GENERIC_PREFIX, MODELS

    print(f"{'name':<26}{'backbone (timm)':<22}head")
    for name in sorted(MODELS):
        builder = MODELS[name]
        print(f"{name:<26}{builder.args[0]:<22}{builder.keywords['head']}")
    print(f"{GENERIC_PREFIX + '<timm name>':<26}{'any, features_only':<22}hrnetv2 | ocr | aspp")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from contextrast.data import check_dataset

    kwargs = {"split": args.split}
    if args.dataset != "digits":
        if not args.root:
            raise ValueError(f"--root is required for dataset {args.dataset!r}")
        kwargs["root"] = args.root
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    report = check_dataset(args.dataset, **kwargs)
    for problem in report.problems:
        print(problem)
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


def _train(args: argparse.Namespace) -> int:
    from contextrast.config import load_config
    from contextrast.engine.distributed import cleanup
    from contextrast.engine.trainer import Trainer

    config = load_config(args.config, args.set)
    try:
        metrics = Trainer(config, resume=args.resume).fit()
    finally:
        cleanup()
    if metrics:
        print(f"final mIoU {metrics['miou']:.4f}; run directory {config.run_dir}")
    return 0


def _checkpoint_config(path: str, overrides: list[str]):
    from contextrast.config import apply_overrides, config_from_dict
    from contextrast.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    return state, config_from_dict(apply_overrides(state["config"], overrides))


def _eval(args: argparse.Namespace) -> int:
    import json

    from contextrast.config import load_config
    from contextrast.engine.builders import build_dataset, build_evaluator, build_model
    from contextrast.engine.checkpoint import load_checkpoint
    from contextrast.engine.distributed import cleanup, init_distributed
    from contextrast.engine.trainer import evaluate
    from contextrast.evaluation.report import format_metrics

    config = load_config(args.config, args.set)
    state = load_checkpoint(args.checkpoint)
    dist = init_distributed(config.run.device)
    try:
        dataset = build_dataset(config, args.split or config.data.val_split, train=False)
        model = build_model(config, dataset.num_classes, pretrained=False)
        model.load_state_dict(state["model"])
        model.to(dist.device)
        metrics = evaluate(
            model, dataset, build_evaluator(config, dataset), config, dist.device, dist
        )
    finally:
        cleanup()
    if dist.is_main:
        metrics["checkpoint"] = str(args.checkpoint)
        out = (
            Path(args.out)
            if args.out
            else Path(args.checkpoint).with_name(f"eval_{args.split or config.data.val_split}.json")
        )
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_metrics(metrics))
        print(f"wrote {out}")
    return 0


def _model_from_checkpoint(args: argparse.Namespace):
    from contextrast.engine.builders import build_model

    state, config = _checkpoint_config(args.checkpoint, args.set)
    model = build_model(config, len(state["classes"]), pretrained=False)
    model.load_state_dict(state["model"])
    return state, config, model.eval()


def _predict(args: argparse.Namespace) -> int:
    from contextrast.evaluation.report import predict_files

    state, config, model = _model_from_checkpoint(args)
    written = predict_files(model, config, state["palette"], args.inputs, Path(args.out))
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from contextrast.models import export_inference

    _, config, model = _model_from_checkpoint(args)
    height, width = args.size if args.size else config.data.crop_size
    example = torch.zeros(1, 3, height, width)
    path = export_inference(model, args.out, example)
    print(f"wrote {path} (inference model only; load with torch.export.load(path).module())")
    return 0


def _losses(_: argparse.Namespace) -> int:
    from contextrast.engine.builders import LOSS_DESCRIPTIONS

    for name, text in LOSS_DESCRIPTIONS.items():
        print(f"{name:<17}{text}")
    print(
        "\nchoose one with --set loss.name=NAME; its options are under loss.<section> in a config"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contextrast",
        description="Contextual contrastive learning (Contextrast) for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=contextrast.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="print versions and available devices")
    info.set_defaults(handler=_info)
    models = commands.add_parser("models", help="list the segmentation model presets")
    models.set_defaults(handler=_models)
    losses = commands.add_parser("losses", help="list the contrastive losses (loss.name)")
    losses.set_defaults(handler=_losses)
    check = commands.add_parser(
        "check-data",
        help="scan a dataset and report every problem at once, with counts",
        description="Scan a dataset and report every problem at once (exit 1 if any).",
    )
    from contextrast.data import DATASETS

    check.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    check.add_argument("--root", help="dataset root folder (not for digits)")
    check.add_argument("--split", default="train")
    check.add_argument("--num-classes", type=int, help="folder / pascal_context class count")
    check.set_defaults(handler=_check_data)

    overrides = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a config value, e.g. --set optim.lr=0.02 (repeatable)",
    }
    train = commands.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train from a YAML config (run with torchrun for several processes).",
    )
    train.add_argument("config", help="YAML config, e.g. configs/cityscapes/...yaml")
    train.add_argument("--set", **overrides)
    train.add_argument("--resume", action="store_true", help="continue from <run dir>/last.pt")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on the validation split",
        description="Evaluate a checkpoint with the config's protocol; prints and writes JSON.",
    )
    evaluate.add_argument("config")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--split", help="dataset split (default: data.val_split)")
    evaluate.add_argument("--out", help="metrics JSON (default: next to the checkpoint)")
    evaluate.add_argument("--set", **overrides)
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser(
        "predict",
        help="segment images: coloured masks and overlays",
        description="Segment images with a checkpoint; writes NAME_mask.png and NAME_overlay.png.",
    )
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--set", **overrides)
    predict.set_defaults(handler=_predict)

    export = commands.add_parser(
        "export",
        help="export the inference model (torch.export .pt2)",
        description="Export the inference model of a checkpoint; no projection or aux head.",
    )
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="output .pt2 file")
    export.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example size")
    export.add_argument("--set", **overrides)
    export.set_defaults(handler=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"contextrast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
