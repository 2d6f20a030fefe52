"""Saved runs: a checkpoint's model with its config, and a finished run's metrics."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from contextrast.config import Config, ConfigError, apply_overrides, config_from_dict
from contextrast.engine.builders import build_model
from contextrast.models import Segmentor
from contextrast.utils.checkpoint import load_checkpoint, load_weights

__all__ = [
    "Run",
    "check_compatible",
    "differing_settings",
    "finished_metrics",
    "last_metrics",
    "load_run",
    "settings_key",
]

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
    return f"model {', '.join(parts)} with {count} classes"


def check_compatible(
    state: dict[str, Any], path: str | os.PathLike, config: Any, num_classes: int
) -> None:
    """Raise a one-line ``ValueError`` naming what differs (model name, head, head width,
    auxiliary head, class count) when the checkpoint's model is not the one ``config``
    builds, then both sides."""
    saved = state["config"].get("model", {})
    before = {key: saved.get(key) for key in MODEL_KEYS}
    now = {key: getattr(config.model, key) for key in MODEL_KEYS}
    classes = len(state["classes"]) if "classes" in state else None
    differ = [f"model.{key}" for key in MODEL_KEYS if before[key] != now[key]]
    if classes not in (None, num_classes):
        differ.append("the class count")
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise ValueError(
            f"checkpoint {path} holds another model ({', '.join(differ)} {verb}): it has "
            f"{_describe(before, classes)}, the config and dataset build "
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
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        return {}
    number, line = numbered[-1]
    try:
        metrics = json.loads(line)
    except ValueError as error:
        raise ValueError(
            f"{path}, line {number}: not a JSON record ({error.msg}); remove or repair that line"
        ) from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}, line {number}: expected a JSON object, got {line[:40]!r}")
    return metrics


#: Where a run is written, not what it trains: left out of its settings.
PLACE_KEYS = ("name", "output_dir")


def _settings(config: Config | dict[str, Any]) -> dict[str, Any]:
    data = config.to_dict() if isinstance(config, Config) else json.loads(json.dumps(config))
    for key in PLACE_KEYS:
        data.get("run", {}).pop(key, None)
    return data


def settings_key(config: Config) -> str:
    """Ten hex digits that change with every setting of ``config`` except where the run is
    written (``run.name``, ``run.output_dir``). Benchmarks and sweeps put it in a run's
    name, so that a run they reuse is one of exactly these settings: an edited config file,
    another ``--iters`` or ``--set`` names another run. Every key counts, those that do not
    change the weights too (``eval.*``, ``data.num_workers``, ``run.device``), and so does a
    key a new version adds: such a change trains new runs rather than risk reading old ones
    as new."""
    text = json.dumps(_settings(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def differing_settings(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (``run.name`` and
    ``run.output_dir`` aside)."""
    if not prefix:
        before, now = _settings(before), _settings(now)
    keys = []
    for key in [*before, *(k for k in now if k not in before)]:
        a, b = before.get(key), now.get(key)
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_settings(a, b, dotted)
        elif a != b:
            keys.append(dotted)
    return keys


def finished_metrics(config: Config) -> dict[str, Any] | None:
    """The last evaluation of the run ``config`` names if it reached ``optim.iters``, else
    None (so that benchmarks and sweeps reuse finished runs and resume the others).

    Raises a one-line ``ConfigError`` when the run directory holds a run of other settings
    (its ``config.yaml`` differs from ``config`` in more than the run's name and folder):
    its numbers are not this config's, and resuming it would mix two settings in one run."""
    run_dir = Path(config.run_dir)
    if not (run_dir / "last.pt").is_file():
        return None
    saved = run_dir / "config.yaml"
    if saved.is_file():
        changed = differing_settings(yaml.safe_load(saved.read_text()) or {}, config.to_dict())
        if changed:
            shown = ", ".join(changed[:4]) + (
                f" and {len(changed) - 4} more" if changed[4:] else ""
            )
            verb = "differs" if len(changed) == 1 else "differ"
            raise ConfigError(
                f"{run_dir} holds a run of other settings ({shown} {verb} from {saved}); "
                "give this one another run.name"
            )
    last = last_metrics(run_dir)
    return last if last.get("iteration", -1) >= config.optim.iters else None
