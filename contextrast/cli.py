"""Command line: ``contextrast <command>``.

Training, evaluation, prediction and export commands arrive with the engine; this module
holds the entry point and the error policy: a bad input ends in one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:  # DatasetError is a ValueError
        print(f"contextrast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
