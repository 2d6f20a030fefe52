"""The JSON record every benchmark writes: what ran, when, where, and its rows."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def write_result(out: str | Path, benchmark: str, rows: list[dict], **fields: Any) -> Path:
    """Write ``{"benchmark", "date", "machine", "torch", **fields, "rows"}`` to ``out`` and
    say so."""
    result = {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.platform()}",
        "torch": torch.__version__,
        **fields,
        "rows": rows,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
