"""The ``contextrast`` console script: imports the command line, then runs it.

Importing :mod:`contextrast.cli` loads torch, timm and the package (seconds on a cold disk);
a Ctrl-C in that time would otherwise print a traceback through the import machinery. The
package's ``__init__`` loads lazily, so this module imports nothing heavy before the ``try``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cli = importlib.import_module("contextrast.cli")
    except KeyboardInterrupt:
        print("contextrast: interrupted while starting (SIGINT); nothing was run", file=sys.stderr)
        return 130
    return cli.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
