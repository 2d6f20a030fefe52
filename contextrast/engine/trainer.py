"""The trainer: SGD or AdamW (parameter groups) + poly LR, CE + α·L_PA, AMP, DDP, atomic
checkpoints, resume.

``Trainer._loop`` reads top to bottom: for each batch one optimiser step (``Trainer._step``),
then the collaborators at their points: :class:`NonFiniteWatch` (a non-finite loss),
:class:`TrainLog` (the log line, TensorBoard, the progress bar), ``Trainer._evaluate`` and
:class:`Checkpoints` (last.pt, best.pt). Between those points a step never waits for the
device.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

import contextrast
from contextrast.config import Config, ConfigError
from contextrast.contrast import NonFiniteError
from contextrast.data import DatasetError, class_pixels, labelled_pixels, seed_worker
from contextrast.data.datasets import Sample, sample_seed
from contextrast.engine.builders import (
    build_contrast,
    build_evaluator,
    build_model,
    build_region,
    build_split,
    check_buildable,
    eval_options,
    unused_loss_settings,
)
from contextrast.engine.optim import apply_hyperparameters, build_optimizer, load_optimizer_state
from contextrast.engine.runs import check_compatible, differing_settings, last_metrics
from contextrast.engine.sampler import IterationBatchSampler
from contextrast.engine.schedule import PolyLR
from contextrast.engine.step import LossTerms, TrainingModule
from contextrast.evaluation.evaluator import evaluate
from contextrast.evaluation.metrics import metrics_json
from contextrast.models import convert_sync_batchnorm
from contextrast.utils.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_weights,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from contextrast.utils.distributed import all_reduce_sum, barrier, init_distributed

__all__ = ["RESUME_APPLIES", "Checkpoints", "NonFiniteWatch", "TrainLog", "Trainer"]

#: Settings a resume takes from the config it is given without asking: the schedule, the
#: evaluation, logging, the device and where the data lie. Any other change (the loss, the
#: augmentations, the batch, the seed, the weight average) changes what is trained, and a
#: resume refuses it unless ``accept_changes`` (``--accept-changes``).
RESUME_APPLIES = (
    "optim.", "eval.", "train.log_interval", "train.eval_interval",
    "train.checkpoint_interval", "data.root", "data.num_workers", "data.check_labels",
    "data.val_split", "run.device", "run.deterministic", "model.pretrained",
)  # fmt: skip

log = logging.getLogger("contextrast")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _at(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may draw from the legacy global RNG
    torch.manual_seed(seed)


class NonFiniteWatch:
    """The first non-finite loss since the last check, recorded on the device.

    ``update`` runs every step without waiting for the device; ``check`` reads the record
    at log, evaluation and checkpoint points and raises a ``FloatingPointError`` that names
    the cause. Kept: the iteration (-1: none), the loss terms, and which samples of that
    batch had non-finite pixels (with their dataset indices).
    """

    def __init__(self, config: Config, model: nn.Module, batch: int, device: torch.device):
        self.config, self.model = config, model
        self.iteration = torch.full((), -1, dtype=torch.long, device=device)
        self.terms = torch.zeros(len(LossTerms._fields), dtype=torch.float64, device=device)
        self.samples = torch.zeros(batch, dtype=torch.bool, device=device)
        self.indices = torch.zeros(batch, dtype=torch.long, device=device)

    def update(
        self, iteration: int, terms: LossTerms, images: torch.Tensor, indices: torch.Tensor
    ) -> None:
        """terms: the step's; images: (B, 3, H, W); indices: (B,) dataset indices (CPU)."""
        stacked = torch.stack([t.detach() for t in terms]).double()  # (T,)
        new = (self.iteration < 0) & ~torch.isfinite(stacked[0])
        self.iteration = torch.where(new, iteration, self.iteration)
        self.terms = torch.where(new, stacked, self.terms)
        broken = ~torch.isfinite(images).flatten(1).all(1)  # (B,)
        self.samples = torch.where(new, broken, self.samples)
        indices = indices.to(self.indices.device, non_blocking=True)
        self.indices = torch.where(new, indices, self.indices)

    def check(self, iteration: int, everywhere: bool = True) -> None:
        """Raise if any process (``everywhere``; else this one) saw a non-finite loss by
        ``iteration``: one host sync and one all-reduce, at points that every rank reaches
        at the same iteration; not per step."""
        seen = (self.iteration >= 0).to(torch.float64)
        if everywhere:
            seen = all_reduce_sum(seen.clone())
        if seen.item() == 0:
            return
        first = int(self.iteration)
        if first < 0:
            raise FloatingPointError(
                f"the loss became non-finite on another process before iteration "
                f"{iteration}; see that process's log"
            )
        total, ce, aux, contrast, region, _ = self.terms.tolist()
        parts = {"ce": ce, "aux": aux, "contrast": contrast, "region": region}
        shown = ", ".join(f"{name} {value:.4g}" for name, value in parts.items())
        head = f"loss is {total} at iteration {first} ({shown})"
        raise FloatingPointError(self._explain(head, parts, self.indices[self.samples].tolist()))

    def refused(
        self, error: Exception, iteration: int, images: torch.Tensor, indices: torch.Tensor
    ) -> FloatingPointError:
        """The error to raise when a loss refused non-finite features itself
        (``NonFiniteError``) at ``iteration``; images: (B, 3, H, W); indices: (B,) (CPU)."""
        finite = torch.isfinite(images).flatten(1).all(1).cpu()  # (B,)
        head = f"non-finite model features at iteration {iteration} ({error})"
        return FloatingPointError(self._explain(head, None, indices[~finite].tolist()))

    def _explain(self, head: str, parts: dict[str, float] | None, bad_samples: list[int]) -> str:
        """A one-line account of a non-finite loss that names its cause.

        head: what was found and when; parts: the step's ce / aux / contrast / region values
        (None when the contrastive loss refused non-finite features); bad_samples: the
        indices of that step's samples whose pixels were not finite.
        """
        c = self.config
        if bad_samples:
            return (
                f"{head}: the input batch holds NaN/inf pixel values (sample indices "
                f"{bad_samples} of split {c.data.train_split!r}); check those images "
                "and model.mean/model.std"
            )
        hint = (
            "fp16 overflowed: use optim.amp=bf16"
            if c.optim.amp == "fp16"
            else "training diverged: lower optim.lr or set optim.grad_clip"
        )
        broken = next(
            (n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())),
            None,
        )
        weights = f" (weights no longer finite, first: {broken})" if broken else ""
        if parts is None or not (math.isfinite(parts["ce"]) and math.isfinite(parts["aux"])):
            return f"{head}: the model's outputs are not finite{weights}; {hint}"
        if not math.isfinite(parts["region"]):
            return (
                f"{head}: the region loss ({c.loss.region.name}) is not finite while "
                "CE is; lower loss.region.weight, or report it with this config"
            )
        return (
            f"{head}: the {c.loss.name!r} loss is not finite while CE is; lower its "
            "loss_weight or raise its temperature, or report it with this config"
        )


class TrainLog:
    """What a run reports: messages of the main process to train.log and stdout (above the
    progress bar while one is shown), TensorBoard scalars, and the training loss.

    ``add`` sums each step's loss terms on the device (no host sync); ``write``, at log
    points, reports the window's means with one all-reduce and one host sync, on every
    process (the all-reduce is collective). ``unlabelled_batches``: the run's batches (one
    process's share each) without a labelled pixel; the checkpoints keep it.
    """

    def __init__(self, config: Config, is_main: bool, world_size: int, device: torch.device):
        self.config, self.is_main, self.world_size = config, is_main, world_size
        self.sums = torch.zeros(len(LossTerms._fields), dtype=torch.float64, device=device)
        self.unlabelled_batches = 0
        self.writer: Any = None
        self.progress: Any = None
        self._handler: logging.Handler | None = None

    def open(self, run_dir: Path) -> None:
        """Write to ``run_dir``'s train.log and TensorBoard folder (the main process's)."""
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._handler = handler
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            log.info("tensorboard is not installed: no TensorBoard scalars")

    def say(self, message: str) -> None:
        if self.is_main:
            log.info(message)
            if self.progress is not None:
                self.progress.write(message)  # keeps the bar intact
            else:
                print(message, flush=True)

    def scalars(self, values: dict[str, float], iteration: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, iteration)

    def start(self, start: int, total: int) -> None:
        """Training runs from iteration ``start`` to ``total``: the first window opens, and
        on a terminal the main process shows a progress bar."""
        self.total = total
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.step_seconds, self.steps = 0.0, 0
        if self.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=total, initial=start, dynamic_ncols=True)

    def add(self, terms: LossTerms, seconds: float) -> None:
        """A step's loss terms; ``seconds``: the step's own time, without loading its batch."""
        self.sums += torch.stack([t.detach() for t in terms]).double()
        self.window_steps += 1
        self.step_seconds += seconds
        self.steps += 1
        if self.progress is not None:
            self.progress.update(1)

    @property
    def seconds_per_step(self) -> float:
        return self.step_seconds / max(1, self.steps)

    def write(self, iteration: int, lr: float) -> None:
        """The window's mean terms over all processes, as one line and as scalars; ``lr``:
        the last step's. Starts the next window."""
        totals = all_reduce_sum(self.sums.clone()).tolist()
        count = self.window_steps
        loss, ce, aux, contrast, region = (v / (count * self.world_size) for v in totals[:5])
        unlabelled = round(totals[5])
        self.unlabelled_batches += unlabelled
        seconds = (time.perf_counter() - self.window_start) / max(1, count)
        terms = {"loss": loss, "ce": ce, "aux": aux, "contrast": contrast, "region": region}
        self.scalars({**{f"train/{k}": v for k, v in terms.items()}, "train/lr": lr}, iteration)
        hours, rest = divmod(int(seconds * (self.total - iteration)), 3600)
        self.say(
            f"it {iteration}/{self.total} | loss {loss:.4f} (ce {ce:.4f}, aux {aux:.4f}, "
            f"contrast {contrast:.4f}"
            + (f", region {region:.4f}" if self.config.loss.region.name != "none" else "")
            + f") | lr {lr:.2e} | {seconds:.3f} s/it | "
            f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}"
            + (f" | {unlabelled} batch(es) without labelled pixels (CE 0)" if unlabelled else "")
        )
        self.scalars({"train/unlabelled_batches": self.unlabelled_batches}, iteration)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        self.sums.zero_()
        self.window_start, self.window_steps = time.perf_counter(), 0

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._handler is not None:
            log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None


class Checkpoints:
    """The run's last.pt, and best.pt at a new best score, written atomically by the main
    process from ``state(iteration)``. ``saved_iteration``: what last.pt holds, on every
    process (None until this run or the one it resumes wrote it)."""

    def __init__(self, run_dir: Path, is_main: bool, state: Callable[[int], dict[str, Any]]):
        self.last, self.best = run_dir / "last.pt", run_dir / "best.pt"
        self.is_main, self.state = is_main, state
        self.saved_iteration: int | None = None

    def save(self, iteration: int, best: bool = False) -> None:
        self.saved_iteration = iteration
        if self.is_main:
            state = self.state(iteration)
            save_checkpoint(state, self.last)
            if best:
                save_checkpoint(state, self.best)

    def holds(self, iteration: int) -> str:
        """What a run stopped at ``iteration`` can be resumed from, in words."""
        if self.saved_iteration is None:
            return f"no checkpoint written yet (iteration {iteration})"
        return f"{self.last} holds iteration {self.saved_iteration}"


class Trainer:
    """Train a config end to end.

    Args:
        config: the resolved configuration.
        resume: continue from ``<run dir>/last.pt``.
        on_iteration: called with the iteration number after each optimiser step (hooks,
            tests).
        accept_changes: with ``resume``, continue although settings that change what is
            trained (:data:`RESUME_APPLIES` lists those a resume applies without asking)
            differ from the checkpoint's; every changed key is named in the log either way.
    """

    def __init__(
        self,
        config: Config,
        resume: bool = False,
        on_iteration: Callable[[int], None] | None = None,
        accept_changes: bool = False,
    ):
        self.config = config
        self.accept_changes = accept_changes
        self.on_iteration = on_iteration
        self.dist = init_distributed(config.run.device)
        self.device = self.dist.device
        self.run_dir = config.run_dir
        if config.data.batch_size % self.dist.world_size:
            raise ConfigError(
                f"data.batch_size: {config.data.batch_size} does not split over "
                f"{self.dist.world_size} processes"
            )
        self.batch_size = config.data.batch_size // self.dist.world_size
        self.train_log = TrainLog(config, self.dist.is_main, self.dist.world_size, self.device)
        self.checkpoints = Checkpoints(self.run_dir, self.dist.is_main, self._state)
        self._check_checkpoints(resume)
        _seed_everything(config.run.seed + self.dist.rank)
        self._build_data(resume)
        self.net = self._build_net(resume)
        self._build_optimisation()
        self.start_iter = 0
        self.best_miou = -math.inf
        self._stop: str | None = None
        self.changed_settings: list[str] = []
        self._final_evaluation = False
        if resume:
            self._load(self.checkpoints.last)
        if self.dist.is_main:
            self._prepare_run_dir()

    def _check_checkpoints(self, resume: bool) -> None:
        """A resume needs last.pt; a new run never overwrites one; neither may be a folder."""
        last = self.checkpoints.last
        for path in (last, self.checkpoints.best):
            if path.exists() and not path.is_file():  # it would fail the first save
                raise ConfigError(f"run.name: {path} is not a file; move it away")
        if resume and not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last} to resume from")
        if not resume and last.is_file():
            raise ConfigError(
                f"run.name: {self.run_dir} already holds a checkpoint; pass --resume to continue "
                "it or choose another run.name"
            )

    def _build_data(self, resume: bool) -> None:
        """Both splits, and (with ``data.check_labels``) every label file read once."""
        c = self.config
        self.train_set = build_split(c, c.data.train_split, train=True)
        self.val_set = build_split(c, c.data.val_split, train=False)
        # The losses' own checks (loss.contrast.*) before the label scan, which can take long.
        check_buildable(c, self.train_set.num_classes)
        self.class_pixels: list[int] | None = None  # without the scan: no head / tail mIoU
        if c.data.check_labels:
            self._check_labels()
        elif not resume:  # a resume may take the checkpoint's counts
            self.train_log.say("no head / middle / tail mIoU: data.check_labels is off")

    def _build_net(self, resume: bool) -> nn.Module:
        """The model, its losses and their moving average, on the device (DDP when several
        processes run); ``self.model``, ``self.contrast`` and ``self.ema`` are its parts."""
        c = self.config
        num_classes = self.train_set.num_classes
        model = build_model(c, num_classes, pretrained=not resume)
        stride = max(model.feature_strides)
        if any(size % stride for size in c.data.crop_size):
            raise ConfigError(
                f"data.crop_size: {c.data.crop_size} must be multiples of {stride}, the largest "
                f"stride of {c.model.name}'s features"
            )
        contrast = build_contrast(c, num_classes, model.feature_channels)
        if hasattr(contrast, "validate"):
            # Its per-step checks each wait for the device. The labels are checked before
            # the first step (data.check_labels, else as each file is read), and a
            # non-finite loss is found at the next log point (NonFiniteWatch).
            contrast.validate = False
        region = build_region(c)
        # Copied before compiling: a copy of a compiled module would call the original's graph.
        self.ema = (
            ModelEmaV3(model, decay=c.train.ema_decay, use_warmup=True)
            if c.train.ema_decay is not None
            else None
        )
        if c.optim.compile:
            # In place: the state dict keeps its keys, so checkpoints load either way.
            backend = "inductor" if c.optim.compile is True else c.optim.compile
            model.compile(backend=backend)
        self.model, self.contrast = model, contrast
        net = TrainingModule(model, contrast, c.model.aux_weight, region=region).to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)
        if self.dist.world_size > 1:
            net = convert_sync_batchnorm(net, self.device)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        return net

    def _build_optimisation(self) -> None:
        """The optimiser's parameter groups, the poly schedule and the mixed precision."""
        c = self.config
        net = self.net.module if self.dist.world_size > 1 else self.net
        self.optimizer = build_optimizer(c, net)
        self.scheduler = PolyLR(
            self.optimizer, c.optim.iters, c.optim.power, c.optim.warmup_iters, c.optim.warmup_ratio
        )
        self.amp_dtype = AMP_DTYPES.get(c.optim.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.optim.amp == "fp16")

    @property
    def unlabelled_batches(self) -> int:
        """The run's batches (one process's share each) without a labelled pixel."""
        return self.train_log.unlabelled_batches

    def _check_labels(self) -> None:
        """Every label file of both splits read before the first iteration: a bad value or
        a split without a labelled pixel stops the run now, not hours later."""
        c = self.config
        where = c.data.root or c.data.dataset
        # the training split's pixels per class: the head / middle / tail thirds of the scores
        self.class_pixels = class_pixels(self.train_set, c.data.num_workers)
        for key, split, dataset, purpose in (
            ("train_split", c.data.train_split, self.train_set, "train on"),
            ("val_split", c.data.val_split, self.val_set, "evaluate"),
        ):
            labelled = (
                sum(self.class_pixels)
                if dataset is self.train_set
                else labelled_pixels(dataset, c.data.num_workers)
            )
            if not labelled:
                raise DatasetError(
                    f"data.{key}: every label pixel of split {split!r} in {where} is "
                    f"{dataset.ignore_index} (ignore): nothing to {purpose}"
                )

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"run.output_dir: cannot create {self.run_dir} ({error.strerror})"
            ) from None
        removed = remove_stale_temporaries(self.run_dir)
        (self.run_dir / "metrics").mkdir(exist_ok=True)
        # A finished run keeps the config it ran; one that trains (or is evaluated) on holds
        # what runs from now on, and what ran until now (the checkpoint's) stays beside it.
        if self.start_iter < self.config.optim.iters or self._final_evaluation:
            if self.changed_settings:
                until = self.run_dir / f"config_until_{self.start_iter}.yaml"
                until.write_text(yaml.safe_dump(self._saved_config, sort_keys=False))
            (self.run_dir / "config.yaml").write_text(self.config.to_yaml())
        self.train_log.open(self.run_dir)
        for path in removed:
            log.info(f"removed {path.name}, left by a write that was killed")

    # ------------------------------------------------------------------ checkpoints

    def _state(self, iteration: int) -> dict[str, Any]:
        return {
            "version": contextrast.__version__,
            "iteration": iteration,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            # What eval, predict and export load when present (engine.load_run).
            **({"ema": self.ema.module.state_dict()} if self.ema is not None else {}),
            "contrast": self.contrast.state_dict() if self.contrast is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(self.device),
            "best_miou": self.best_miou,
            "class_pixels": self.class_pixels,  # eval's head / middle / tail thirds
            "unlabelled_batches": self.unlabelled_batches,
            "classes": list(self.train_set.classes),
            "palette": self.train_set.palette.tolist(),
        }

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        saved = state["config"]
        # Checkpoints from before optim.name trained SGD. An optimiser's state means nothing
        # to another optimiser.
        saved.setdefault("optim", {}).setdefault("name", "sgd")
        # ... and from before pair_form scored their pairs densely (the default).
        contrast = saved.get("loss", {}).get("contrast")
        if isinstance(contrast, dict):
            contrast.setdefault("pair_form", "dense")
        for section, key in (("loss", "name"), ("data", "dataset"), ("optim", "name")):
            before, now = saved[section][key], getattr(getattr(self.config, section), key)
            if before != now:
                why = {
                    "optim": ": an optimiser's state means nothing to another; start a new run",
                    "loss": ": its loss module's weights differ; start a new run",
                }.get(section, "")
                raise ConfigError(
                    f"{section}.{key}: {now!r} differs from {before!r} in the checkpoint {path}"
                    f"{why}"
                )
        if self.config.loss.name == "contextrast":
            before = _at(saved, "loss.contrast.anchor_fusion") or "fixed"  # older checkpoints
            now = self.config.loss.contrast.anchor_fusion
            if before != now:
                raise ConfigError(
                    f"loss.contrast.anchor_fusion: {now!r} differs from {before!r} in the "
                    f"checkpoint {path}: the fusion modules' weights and optimiser state "
                    "would be missing or left over; start a new run"
                )
        check_compatible(state, path, self.config, self.train_set.num_classes)
        classes = list(self.train_set.classes)
        if state.get("classes") not in (None, classes) and not self.accept_changes:
            raise ConfigError(
                f"data: the classes {classes} differ from {state['classes']} that the checkpoint "
                f"{path} was trained on (same count, other names or order); resume on its data, "
                "or pass --accept-changes"
            )
        self._check_changes(saved, path, int(state["iteration"]))
        load_weights(self.model, state["model"], path, "model")
        saved_decay = saved.get("train", {}).get("ema_decay")
        if "ema" in state and self.ema is None:
            raise ConfigError(
                f"train.ema_decay: the checkpoint {path} keeps a moving average of the weights "
                f"(decay {saved_decay}), which its metrics and best.pt are based on and eval and "
                "export deploy; set train.ema_decay to continue it"
            )
        new_average = self.ema is not None and "ema" not in state
        if self.ema is not None:
            # A run that had no average yet starts it from the weights it resumes.
            load_weights(self.ema.module, state.get("ema", state["model"]), path, "model (EMA)")
        if self.contrast is not None:
            load_weights(
                self.contrast, self._contrast_state(state), path, f"{self.config.loss.name} loss"
            )
        load_optimizer_state(self.optimizer, state["optimizer"], list(self.net.parameters()))
        self.scheduler.load_state_dict(state["scheduler"])
        # A run saved without fp16 has an empty scaler state: switching optim.amp to fp16 at
        # resume starts a fresh scaler (its default scale), as a new fp16 run would.
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        # Each rank's RNG differs; the checkpoint holds rank 0's, so other ranks re-derive.
        if self.dist.rank == 0:
            restore_rng(state["rng"], self.device)
        else:
            _seed_everything(self.config.run.seed + self.dist.rank + state["iteration"])
        self.start_iter = self.checkpoints.saved_iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        if new_average:
            # best.pt so far was chosen on the trained weights' scores, not the average's.
            self.best_miou = -math.inf
        self.train_log.unlabelled_batches = int(state.get("unlabelled_batches", 0))
        self._resume_class_pixels(state.get("class_pixels"))
        self.train_log.say(f"resumed from {path} at iteration {self.start_iter}")
        self._reschedule(saved.get("optim", {}), self.start_iter)
        if new_average:
            self.train_log.say(
                "train.ema_decay: the checkpoint had no moving average; it starts from the "
                "resumed weights, and best.pt is chosen among the averages from now on"
            )

    def _contrast_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's loss weights; where an accepted change switched Contextrast++'s
        anchor memory on or off or resized it, its queues start empty (or are dropped)."""
        saved = state["contrast"]
        own = self.contrast.state_dict()

        def memory(weights: dict[str, Any]) -> dict[str, tuple[int, ...]]:
            return {k: tuple(v.shape) for k, v in weights.items() if k.startswith("memory.")}

        if memory(saved) == memory(own) or not self.accept_changes:
            return saved
        self.train_log.say(
            f"anchor memory (loss.contrast.anchor_memory) starts empty at iteration "
            f"{int(state['iteration'])}"
        )
        kept = {k: v for k, v in saved.items() if not k.startswith("memory.")}
        return {**kept, **{k: v for k, v in own.items() if k.startswith("memory.")}}

    def _resume_class_pixels(self, saved: list[int] | None) -> None:
        """The head / middle / tail thirds keep the counts the run began with: without the
        label scan (``data.check_labels: false``) they come from the checkpoint; a scan that
        counts otherwise (another ``data.root``) is said, and its counts used from now on."""
        if self.class_pixels is None:
            self.class_pixels = saved
        elif saved is not None and saved != self.class_pixels:
            self.train_log.say(
                "the training split's pixels per class differ from the checkpoint's: the head /"
                " middle / tail thirds use today's counts from here on"
            )
        if self.class_pixels is None:
            self.train_log.say("no head / middle / tail mIoU: data.check_labels is off")

    def _check_changes(self, saved: dict[str, Any], path: Path, iteration: int) -> None:
        """Name every setting that differs from the checkpoint's; refuse those that change
        what is trained (not in :data:`RESUME_APPLIES`) unless ``accept_changes``, and an
        interrupted run's schedule cut below the iteration it reached."""
        now = self.config.to_dict()
        changed = differing_settings(saved, now)
        # Adding a weight average to a run without one, or dropping one, are their own cases
        # (_load): the first is allowed, the second refused, each with its own message.
        if None in (saved.get("train", {}).get("ema_decay"), self.config.train.ema_decay):
            changed = [key for key in changed if key != "train.ema_decay"]
        trained = [key for key in changed if not key.startswith(RESUME_APPLIES)]

        def show(keys: list[str]) -> str:
            return ", ".join(f"{k} {_at(saved, k)!r} -> {_at(now, k)!r}" for k in keys)

        if trained and not self.accept_changes:
            verb, pronoun = (
                ("differs", "it changes") if len(trained) == 1 else ("differ", "they change")
            )
            raise ConfigError(
                f"--resume: {show(trained)} {verb} from the checkpoint {path}; {pronoun} what "
                "is trained: resume with the checkpoint's values, or pass --accept-changes"
            )
        finished = iteration >= saved.get("optim", {}).get("iters", iteration)
        if not finished and iteration > self.config.optim.iters:
            raise ConfigError(
                f"optim.iters: {self.config.optim.iters} is below iteration {iteration}, which "
                f"the interrupted run in {path} reached (of {saved['optim']['iters']}); resume "
                f"with optim.iters >= {iteration} to finish it and evaluate"
            )
        others = [key for key in changed if not key.startswith("optim.")]
        if others:  # optim.* are named with the schedule they make (_reschedule)
            accepted = " (accepted: --accept-changes)" if trained else ""
            self.train_log.say(f"resumed with changed settings: {show(others)}{accepted}")
        self.changed_settings = changed
        self._saved_config = saved
        # Cut to the iteration it reached: it ends here, with the evaluation it never had.
        self._final_evaluation = not finished and iteration == self.config.optim.iters

    def _reschedule(self, saved: dict[str, Any], iteration: int) -> None:
        """The schedule of the config being resumed with, not the checkpoint's: a longer
        ``optim.iters`` extends the poly decay to the new end (as mmseg and timm do), a new
        ``optim.lr`` (or multiplier) is the new base, new decay, momentum or betas apply, and
        the momentum buffers (Adam's moments) carry on."""
        o = self.config.optim
        apply_hyperparameters(self.optimizer, o)
        lrs = self.scheduler.reset(
            o.lr, o.iters, o.power, o.warmup_iters, o.warmup_ratio, iteration
        )
        changed = [
            f"{key} {saved[key[6:]]} -> {getattr(o, key[6:])}"
            for key in self.changed_settings
            if key.startswith("optim.") and key[6:] in saved
        ]
        if changed and iteration < o.iters:
            self.train_log.say(
                f"resumed with a new schedule ({', '.join(changed)}): lr {lrs[0]:.2e} at "
                f"iteration {iteration}, decaying to 0 at iteration {o.iters}"
            )

    # ------------------------------------------------------------------ training

    def fit(self) -> dict[str, Any]:
        """Train to ``optim.iters``; returns the last evaluation's metrics.

        An error or interrupt that stops the run is written to ``train.log`` too, then
        raised; the last checkpoint stays the state to ``--resume`` from.
        """
        total = self.config.optim.iters
        self.iteration = self.start_iter
        # run.deterministic holds for this run's steps only: the process's own setting is
        # restored afterwards (a notebook or a test suite goes on with its own).
        before = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
        )
        if self.config.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        try:
            if self._final_evaluation:
                return self._finish_at(self.start_iter)
            if self.start_iter >= total:
                self.train_log.say(
                    f"{self.run_dir} already finished at iteration {self.start_iter} of {total}: "
                    "nothing to train (raise optim.iters to continue it)"
                )
                return last_metrics(self.run_dir)
            return self._loop(total)
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                error.saved = self.checkpoints.holds(self.iteration)  # the CLI's one line
            if self.dist.is_main:
                what = "interrupted" if isinstance(error, KeyboardInterrupt) else "stopped"
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                saved = getattr(error, "saved", None)
                behind = saved and self.checkpoints.saved_iteration != self.iteration
                log.error(
                    f"{what} at iteration {self.iteration}: {type(error).__name__}"
                    + (f": {reason}" if reason else "")
                    + (f" ({saved})" if behind else "")
                )
            raise
        finally:
            self.train_log.close()
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            torch.backends.cudnn.benchmark = before[2]

    def _loop(self, total: int) -> dict[str, Any]:
        """Train from ``start_iter`` to ``total``; returns the last evaluation's metrics."""
        t = self.config.train
        self._watch = NonFiniteWatch(self.config, self.model, self.batch_size, self.device)
        self.net.train()
        self.train_log.start(self.start_iter, total)
        self.train_log.say(
            f"training {self.config.model.name} with {self.config.loss.name} on "
            f"{self.config.data.dataset} for {total} iterations (from {self.start_iter}), "
            f"{self.dist.world_size} process(es), "
            f"{self.config.optim.name} lr {self.config.optim.lr:g}"
        )
        unused = unused_loss_settings(self.config)
        if unused:
            self.train_log.say(
                f"unused with loss.name {self.config.loss.name!r}: {', '.join(unused)}"
            )
        metrics: dict[str, Any] = {}
        for iteration, batch in enumerate(self._loader(), start=self.start_iter + 1):
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]  # this step's; the step moves it on
            terms = self._step(batch, iteration)
            self.iteration = iteration
            self.train_log.add(terms, time.perf_counter() - started)
            logs, evaluates, saves = (
                iteration % every == 0 or iteration == total
                for every in (t.log_interval, t.eval_interval, t.checkpoint_interval)
            )
            if logs or evaluates or saves or self._stop is not None:
                # Never log, score or save non-finite weights. A signal reaches each rank at
                # its own step: a stop alone checks this rank only (no collective).
                self._watch.check(iteration, everywhere=logs or evaluates or saves)
            if logs:
                self.train_log.write(iteration, lr)
            best = False
            if evaluates:
                metrics, best = self._evaluate(iteration)
            if saves or best:
                self.checkpoints.save(iteration, best)
                barrier()
            if self.on_iteration is not None:
                self.on_iteration(iteration)
            if self._stop is not None:
                self._stop_now(iteration, saved=saves or best)
        return metrics

    def _loader(self) -> DataLoader:
        c = self.config
        sampler = IterationBatchSampler(
            len(self.train_set),
            self.batch_size,
            self.dist.rank,
            self.dist.world_size,
            c.run.seed,
            self.start_iter,
            c.optim.iters,
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=c.data.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=seed_worker,
            # Its own generator: drawing worker seeds from the global RNG would shift the
            # stream that dropout and pixel sampling use, and break resume equivalence.
            generator=torch.Generator().manual_seed(sample_seed(c.run.seed, 0, self.start_iter, 4)),
        )

    def _step(self, batch: Sample, iteration: int) -> LossTerms:
        """One optimiser step on ``batch``, the run's ``iteration``-th (1 for the first),
        without waiting for the device; returns its loss terms."""
        c = self.config
        images = batch.image.to(self.device, non_blocking=True)
        target = batch.label.to(self.device, non_blocking=True)
        scale = 1.0 if iteration > c.loss.contrast_warmup_iters else 0.0
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
            try:
                terms = self.net(images, target, scale, iteration - 1)
            except NonFiniteError as error:  # a contrastive loss that checks its features
                raise self._watch.refused(error, iteration, images, batch.index) from None
        self._watch.update(iteration, terms, images, batch.index)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        if c.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), c.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, step=iteration)
        self.scheduler.step()
        return terms

    def _finish_at(self, iteration: int) -> dict[str, Any]:
        """An interrupted run whose schedule now ends where it stopped: evaluate it, and
        write last.pt (with this config) and best.pt as the end of a run does."""
        self.train_log.say(
            f"optim.iters {iteration}: the interrupted run ends at iteration {iteration}; "
            "evaluating it"
        )
        self.train_log.start(iteration, iteration)  # no step: its timing reads 0
        metrics, best = self._evaluate(iteration)
        self.checkpoints.save(iteration, best=best)
        return metrics

    def _stop_now(self, iteration: int, saved: bool) -> None:
        """After a ``request_stop``: last.pt at ``iteration`` (unless the step just wrote it),
        then ``KeyboardInterrupt``."""
        # No barrier: under DDP the ranks may stop at different steps.
        if not saved:
            self.checkpoints.save(iteration)
        self.train_log.say(f"stop requested ({self._stop}): last.pt holds iteration {iteration}")
        raise KeyboardInterrupt(self._stop)

    @property
    def stop_requested(self) -> bool:
        return self._stop is not None

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (a signal handler calls this on pre-emption): the
        loop writes ``last.pt`` at that iteration, then raises ``KeyboardInterrupt(reason)``,
        so a resumed run loses nothing."""
        self._stop = reason

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, iteration: int) -> tuple[dict[str, Any], bool]:
        """The model's metrics, recorded, and whether they are the best so far. With
        ``train.ema_decay``: the average's, and the trained weights' own under ``"raw"`` (as
        timm reports both)."""
        metrics = self._score(self.model)
        if self.ema is not None:
            kept = ("miou", "pixel_accuracy", "boundary_miou", "frequency_miou", "size_miou")
            raw = {k: metrics[k] for k in kept if k in metrics}
            metrics = {**self._score(self.ema.module), "raw": raw}
        metrics.update(iteration=iteration, seconds_per_iter=self.train_log.seconds_per_step)
        if self.dist.is_main:
            self._record(metrics)
        best = metrics["miou"] > self.best_miou
        if best:
            self.best_miou = metrics["miou"]
        return metrics, best

    def _score(self, model: nn.Module) -> dict[str, Any]:
        return evaluate(
            model,
            self.val_set,
            build_evaluator(self.config, self.val_set, self.class_pixels),
            self.device,
            **eval_options(self.config),
            rank=self.dist.rank,
            world=self.dist.world_size,
        )

    def _record(self, metrics: dict[str, Any]) -> None:
        """metrics/iter_<N>.json, a line of metrics.jsonl, TensorBoard and the log line."""
        iteration = metrics["iteration"]
        path = self.run_dir / "metrics" / f"iter_{iteration:07d}.json"
        path.write_text(metrics_json(metrics, indent=2) + "\n")
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(metrics_json(metrics) + "\n")
        raw = metrics.get("raw")
        self.train_log.scalars(
            {
                "val/miou": metrics["miou"],
                **({"val/miou_raw": raw["miou"]} if raw else {}),
                "val/pixel_accuracy": metrics["pixel_accuracy"],
                **{f"val/boundary_miou_{w}px": v for w, v in metrics["boundary_miou"].items()},
                **{f"val/{k}_miou": v for k, v in metrics.get("frequency_miou", {}).items()},
                **{f"val/{k}_objects_miou": v for k, v in metrics.get("size_miou", {}).items()},
            },
            iteration,
        )
        boundary = ", ".join(f"{w}px {v:.4f}" for w, v in metrics["boundary_miou"].items())
        weights = f" (EMA weights; trained weights {raw['miou']:.4f})" if raw else ""
        thirds = metrics.get("frequency_miou")
        by_frequency = (
            ", head / middle / tail mIoU "
            + " / ".join("n/a" if v != v else f"{v:.4f}" for v in thirds.values())
            if thirds
            else ""
        )
        self.train_log.say(
            f"eval @ {iteration}: mIoU {metrics['miou']:.4f}{weights}"
            f", pixel acc {metrics['pixel_accuracy']:.4f}, boundary mIoU {boundary}" + by_frequency
        )
