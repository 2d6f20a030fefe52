"""The JSON record every benchmark writes: what ran, when, where, and its rows; and the checks
the tools share on what they read and write (each a one-line exit naming the file)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def write_result(out: str | Path, benchmark: str, rows: list[dict], **fields: Any) -> Path:
    """Write ``{"benchmark", "date", "machine", "torch", **fields, "rows"}`` to ``out`` and
    say so."""
    import torch  # here, so that the tools that only read results start without it

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


def check_out(path: str | Path, option: str = "--out", suffix: str | None = None) -> Path:
    """``path`` as a file a tool can write once its work is done, or a one-line exit naming
    ``option``: checked before the work, so that no training or measuring is lost to a folder
    given for a file, a file standing where a folder must be, or a read-only place.
    ``suffix``: the ending the file must have (".png": what the plot is saved as)."""
    path = Path(path)
    if suffix and path.suffix.lower() != suffix:
        raise SystemExit(f"{option} {path}: must end in {suffix}")
    if path.is_dir():
        raise SystemExit(f"{option} {path}: a folder; name the file to write")
    above = next(p for p in path.parents if p.exists() or p == p.parent)  # made if missing
    if not above.is_dir():
        raise SystemExit(f"{option} {path}: {above} is a file, not a folder")
    if not os.access(path if path.exists() else above, os.W_OK):
        raise SystemExit(f"{option} {path}: {path if path.exists() else above} is not writable")
    return path


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (JSON's NaN, a string or a bool are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_accuracy(path: str | Path, metric: str = "miou") -> dict:
    """An ``accuracy.py`` result, checked entry by entry: rows of distinct methods, each
    ``per_seed`` an object of integer seeds whose mIoU (and ``metric``) is a finite number;
    ``runs`` an object of run names; ``config``, ``overrides`` and ``iters`` of their types.
    Anything else is a one-line exit naming the file and the entry, not a traceback of the
    tool that reads it."""

    def refuse(what: str):
        raise SystemExit(f"{path}: {what}")

    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:  # a bad encoding is a ValueError too
        raise SystemExit(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(result, dict) or result.get("benchmark") != "accuracy":
        kind = result.get("benchmark") if isinstance(result, dict) else type(result).__name__
        refuse(f"not an accuracy.py result (benchmark: {kind!r})")
    rows = result.get("rows")
    if not isinstance(rows, list):
        refuse("rows missing" if "rows" not in result else "rows is not a list")
    methods = set()
    for i, row in enumerate(rows):
        at = f"rows[{i}]"
        if not isinstance(row, dict):
            refuse(f"{at} is not an object")
        if not isinstance(row.get("method"), str):
            refuse(f"{at}.method missing or not a string")
        if row["method"] in methods:
            refuse(f"{at}.method {row['method']!r} is in an earlier row too")
        methods.add(row["method"])
        if "per_seed" not in row:
            refuse(f"{at}.per_seed missing")
        if not isinstance(row["per_seed"], dict):
            refuse(f"{at}.per_seed is not an object of seeds")
        for seed, scores in row["per_seed"].items():
            try:
                int(seed)
            except ValueError:
                refuse(f"{at}.per_seed: seed {seed!r} is not an integer")
            if not isinstance(scores, dict):
                refuse(f"{at}.per_seed[{seed!r}] is not an object of scores")
            for key in dict.fromkeys(["miou", metric]):
                if key not in scores:
                    refuse(f"{at}.per_seed[{seed!r}].{key} missing")
                if not finite(scores[key]):
                    refuse(f"{at}.per_seed[{seed!r}].{key} is not a finite number: "
                           f"{scores[key]!r}")  # fmt: skip
    runs = result.get("runs", {})
    if not isinstance(runs, dict) or not all(isinstance(r, str) for r in runs.values()):
        refuse("runs is not an object of run names (strings)")
    overrides = result.get("overrides")
    if overrides is not None and not (
        isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
    ):
        refuse("overrides is not a list of KEY=VALUE strings")
    if result.get("config") is not None and not isinstance(result["config"], str):
        refuse("config is not a file name (a string)")
    iters = result.get("iters")
    if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool)):
        refuse("iters is not an integer")
    return result


def read_metrics(path: str | Path) -> list[dict]:
    """Every evaluation in a run's ``metrics.jsonl``, oldest first, blank lines skipped. A
    line that is not a JSON object (a run killed while writing it) is a ``ValueError``
    naming the file and the line; a file that cannot be read is an ``OSError``."""
    evaluations = []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise ValueError(f"{path} line {number}: not a JSON object (a broken or cut line)")
        evaluations.append(entry)
    return evaluations


def sd(values: list[float]) -> float | None:
    """The sample standard deviation, or None under two values (undefined: never NaN, which
    prints as ``nan`` and makes JSON invalid)."""
    return statistics.stdev(values) if len(values) > 1 else None


def shown(value: float | None, spec: str = ".2f", missing: str = "n/a") -> str:
    """``value`` formatted by ``spec``; ``missing`` for an undefined one (None)."""
    return missing if value is None else format(value, spec)
