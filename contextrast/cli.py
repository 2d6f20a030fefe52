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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"contextrast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
