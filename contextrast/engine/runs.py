"""Saved runs: a checkpoint's model with its config, and a finished run's metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from contextrast.config import Config, apply_overrides, config_from_dict
from contextrast.engine.builders import build_model
from contextrast.models import Segmentor
from contextrast.utils.checkpoint import load_checkpoint, load_weights

__all__ = ["Run", "check_compatible", "finished_metrics", "last_metrics", "load_run"]

#: The model keys that decide a checkpoint's state-dict layout.
MODEL_KEYS = ("name", "head", "head_width", "aux")


class Run(NamedTuple):
    """A loaded checkpoint. model: in eval mode; classes and palette: the training set's."""

    config: Config
    model: Segmentor
    classes: list[str]
    palette: list[list[int]]
    state: dict[str, Any]


def _describe(model: dict[str, Any], classes: int | None) -> str:
    parts = [str(model.get("name"))]
    parts += [f"{k} {model[k]}" for k in MODEL_KEYS[1:] if model.get(k) not in (None, False)]
    count = classes if classes is not None else "an unknown number of"
    return f"{count} classes ({', '.join(parts)})"


def check_compatible(
    state: dict[str, Any], path: str | os.PathLike, config: Any, num_classes: int
) -> None:
    """Raise a one-line ``ValueError`` naming both sides when the checkpoint's model (class
    count, model name, head, head width, auxiliary head) is not the one ``config`` builds."""
    saved = state["config"].get("model", {})
    before = {key: saved.get(key) for key in MODEL_KEYS}
    now = {key: getattr(config.model, key) for key in MODEL_KEYS}
    classes = len(state["classes"]) if "classes" in state else None
    if before != now or classes not in (None, num_classes):
        raise ValueError(
            f"checkpoint {path} has {_describe(before, classes)}, the config and dataset have "
            f"{_describe(now, num_classes)}"
        )


def load_run(
    checkpoint: str | os.PathLike,
    config: Config | None = None,
    overrides: Sequence[str] = (),
    num_classes: int | None = None,
) -> Run:
    """Load a checkpoint's model.

    Args:
        checkpoint: a ``last.pt`` / ``best.pt``.
        config: the config that builds the model (default: the one saved in the checkpoint,
            with ``overrides`` applied).
        num_classes: the class count the caller's dataset has (default: the checkpoint's).

    Raises a one-line ``ValueError`` naming both sides when the checkpoint's model is not the
    one the config builds.
    """
    state = load_checkpoint(checkpoint)
    if config is None:
        config = config_from_dict(apply_overrides(state["config"], list(overrides)))
    classes = list(state.get("classes", []))
    count = num_classes if num_classes is not None else len(classes)
    check_compatible(state, checkpoint, config, count)
    model = build_model(config, count, pretrained=False)
    # A run trained with train.ema_decay reported the average's metrics: deploy the average.
    weights = state.get("ema", state["model"])
    load_weights(model, weights, checkpoint, "model")
    return Run(config, model.eval(), classes, state.get("palette", []), state)


def last_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The last evaluation in a run directory's ``metrics.jsonl`` ({} before the first)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def finished_metrics(config: Config) -> dict[str, Any] | None:
    """The last evaluation of the run ``config`` names if it reached ``optim.iters``, else
    None (so that benchmarks and sweeps reuse finished runs and resume the others)."""
    run_dir = Path(config.run_dir)
    if not (run_dir / "last.pt").is_file():
        return None
    last = last_metrics(run_dir)
    return last if last.get("iteration", -1) >= config.optim.iters else None
