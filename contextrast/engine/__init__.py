"""Training and the glue that reads configs: builders, the trainer and saved runs."""

from contextrast.engine.builders import (
    LOSS_DESCRIPTIONS,
    build_contrast,
    build_evaluator,
    build_model,
    build_split,
    eval_options,
    predict_options,
)
from contextrast.engine.runs import (
    Run,
    check_compatible,
    differing_settings,
    finished_metrics,
    last_metrics,
    load_run,
    settings_key,
)
from contextrast.engine.sampler import IterationBatchSampler
from contextrast.engine.schedule import PolyLR
from contextrast.engine.step import LossTerms, TrainingModule
from contextrast.engine.sweep import sweep
from contextrast.engine.trainer import Trainer

__all__ = [
    "LOSS_DESCRIPTIONS",
    "IterationBatchSampler",
    "LossTerms",
    "PolyLR",
    "Run",
    "Trainer",
    "TrainingModule",
    "build_contrast",
    "build_evaluator",
    "build_model",
    "build_split",
    "check_compatible",
    "differing_settings",
    "eval_options",
    "finished_metrics",
    "last_metrics",
    "load_run",
    "predict_options",
    "settings_key",
    "sweep",
]
