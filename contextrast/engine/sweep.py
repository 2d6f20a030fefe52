"""One run per value of a config key (the paper's Tables 6–8)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from contextrast.config import load_config, read_yaml
from contextrast.engine.runs import finished_metrics, settings_key
from contextrast.engine.trainer import Trainer

__all__ = ["sweep"]


def sweep(
    config_path: str | os.PathLike, param: str, values: Sequence[str], overrides: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Train one run per value of the dotted key ``param`` (Tables 6–8); finished runs are
    reused, interrupted ones resumed (a run's name ends with its ``settings_key``, so that a
    sweep after an edit of the config trains the edited settings). Returns one row per
    value: value, run directory, mIoU, pixel accuracy and boundary mIoU."""
    base = load_config(config_path, list(overrides))
    rows = []
    for raw in values:
        name = f"{base.run.name}_{param.split('.')[-1]}_{raw}"
        config = load_config(config_path, [*overrides, f"{param}={raw}", f"run.name={name}"])
        config.run.name = f"{name}_{settings_key(config)}"
        metrics = finished_metrics(config)
        if metrics is None:
            metrics = Trainer(config, resume=(config.run_dir / "last.pt").is_file()).fit()
        rows.append(
            {
                "value": read_yaml(raw),
                "run": str(config.run_dir),
                "miou": metrics["miou"],
                "pixel_accuracy": metrics["pixel_accuracy"],
                "boundary_miou": metrics["boundary_miou"],
            }
        )
    return rows
