"""Iteration-based trainer: SGD + poly LR, CE + α·L_PA, AMP, DDP, atomic checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset

import contextrast
from contextrast.config import Config, ConfigError
from contextrast.contrast import NonFiniteError
from contextrast.data import DatasetError, SegmentationDataset, labelled_pixels, seed_worker
from contextrast.data.datasets import sample_seed
from contextrast.engine.builders import build_contrast, build_dataset, build_evaluator, build_model
from contextrast.engine.checkpoint import (
    capture_rng,
    check_compatible,
    load_checkpoint,
    load_weights,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from contextrast.engine.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from contextrast.evaluation.evaluator import Evaluator
from contextrast.evaluation.inference import predict_probabilities
from contextrast.evaluation.metrics import metrics_json
from contextrast.models import Segmentor, convert_sync_batchnorm

__all__ = ["IterationBatchSampler", "LossTerms", "PolyLR", "Trainer", "TrainingModule", "evaluate"]

log = logging.getLogger("contextrast")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base · (1 − it/total)^power``, times a linear warm-up factor from
    ``warmup_ratio`` to 1 over the first ``warmup_iters`` iterations."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        power: float = 0.9,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.1,
    ):
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer)

    def factor(self, iteration: int) -> float:
        poly = max(0.0, 1.0 - iteration / self.total_iters) ** self.power
        if iteration < self.warmup_iters:
            poly *= self.warmup_ratio + (1 - self.warmup_ratio) * iteration / self.warmup_iters
        return poly

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class IterationBatchSampler(Sampler[list[int]]):
    """Per-rank batches for iterations [start, total) of an endless shuffled stream.

    Epoch e is a permutation drawn from (seed, e); its k-th global batch is split evenly over
    the ranks. Indices carry the epoch (``e · len + i``) so that each sample's augmentation
    draw depends on (seed, epoch, index) even inside DataLoader workers, and a resumed run
    sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self, length: int, batch_size: int, rank: int, world: int, seed: int, start: int, total: int
    ):
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world
        self.seed, self.start, self.total = seed, start, total
        self.steps_per_epoch = length // (batch_size * world)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: the training set has {length} samples, fewer than the "
                f"global batch of {batch_size * world}"
            )

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        global_batch = self.batch_size * self.world
        epoch, order = -1, None
        for iteration in range(self.start, self.total):
            e, k = divmod(iteration, self.steps_per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(sample_seed(self.seed, e, 0, stream=3))
                epoch, order = e, torch.randperm(self.length, generator=g)
            first = k * global_batch + self.rank * self.batch_size
            yield [e * self.length + int(i) for i in order[first : first + self.batch_size]]


class LossTerms(NamedTuple):
    """total: the optimised scalar; ce, aux, contrast: its (unweighted-by-switch) parts;
    unlabelled: 1.0 when the batch (this rank's share) has no labelled pixel, else 0.0."""

    total: torch.Tensor
    ce: torch.Tensor
    aux: torch.Tensor
    contrast: torch.Tensor
    unlabelled: torch.Tensor


class TrainingModule(nn.Module):
    """Model and contrastive loss in one module, so that DDP averages the gradients of the
    projection heads as well as the model's.

    Args:
        model: the segmentor.
        contrast: a contrastive loss module or None (CE baseline).
        aux_weight: weight of the auxiliary CE.
    """

    def __init__(
        self,
        model: Segmentor,
        contrast: nn.Module | None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
    ):
        super().__init__()
        self.model = model
        self.contrast = contrast
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor):
        """Mean CE over the labelled pixels; exactly 0 (with a graph) when there are none.

        logits: (B, N, h, w); target: (B, H, W); labelled: () their count.
        """
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        # "mean" would divide by zero on a crop without labels (sky-only, ignore borders).
        total = F.cross_entropy(
            logits.float(), target, ignore_index=self.ignore_index, reduction="sum"
        )
        return total / labelled.clamp(min=1)

    def forward(
        self, images: torch.Tensor, target: torch.Tensor, contrast_scale: float = 1.0
    ) -> LossTerms:
        """images: (B, 3, H, W); target: (B, H, W). ``contrast_scale`` 0 keeps the term in the
        graph with zero weight (warm-up), identically on one process and on many."""
        out = self.model(images)
        labelled = (target != self.ignore_index).sum()
        ce = self._ce(out.logits, target, labelled)
        zero = ce.new_zeros(())
        aux = self._ce(out.aux_logits, target, labelled) if out.aux_logits is not None else zero
        contrast = self.contrast(out.features, out.logits, target) if self.contrast else zero
        total = ce + self.aux_weight * aux + contrast_scale * contrast
        unlabelled = (labelled == 0).to(ce.dtype)
        return LossTerms(total, ce.detach(), aux.detach(), contrast.detach(), unlabelled)


def evaluate(
    model: Segmentor,
    dataset: SegmentationDataset,
    evaluator: Evaluator,
    config: Config,
    device: torch.device,
    dist: DistInfo | None = None,
) -> dict[str, Any]:
    """Evaluate on ``dataset`` with the protocol of ``config.eval``; ranks split the images
    and their statistics are summed."""
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    count = len(dataset)
    if config.eval.max_images is not None:
        count = min(count, config.eval.max_images)
    shard = Subset(dataset, list(range(rank, count, world)))
    loader = DataLoader(
        shard,
        batch_size=1,
        num_workers=min(2, config.data.num_workers),
        generator=torch.Generator().manual_seed(config.run.seed),
    )
    was_training = model.training
    model.eval()
    forward = model.inference()
    e = config.eval
    with torch.no_grad():
        for sample in loader:
            probabilities = predict_probabilities(
                forward,
                sample.image.to(device),
                mode=e.mode,
                crop=e.crop_size,
                stride=e.stride,
                scales=e.scales,
                flip=e.flip,
            )
            instances = sample.instances if sample.instances.numel() else None
            evaluator.update(probabilities.argmax(1), sample.label, instances)
    evaluator.reduce()
    model.train(was_training)
    if not bool(evaluator.confusion.sum() > 0):
        raise DatasetError(
            f"{dataset.name}: the {count} evaluated images have no labelled pixel (every label "
            f"pixel is {dataset.ignore_index}, ignore): no score is defined"
        )
    return evaluator.compute()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may draw from the legacy global RNG
    torch.manual_seed(seed)


class Trainer:
    """Train a config end to end.

    Args:
        config: the resolved configuration.
        resume: continue from ``<run dir>/last.pt``.
        on_iteration: called with the iteration number after each optimiser step (hooks,
            tests).
    """

    def __init__(
        self,
        config: Config,
        resume: bool = False,
        on_iteration: Callable[[int], None] | None = None,
    ):
        self.config = config
        self.on_iteration = on_iteration
        self.dist = init_distributed(config.run.device)
        self.device = self.dist.device
        self.run_dir = config.run_dir
        c = config
        if c.data.batch_size % self.dist.world_size:
            raise ConfigError(
                f"data.batch_size: {c.data.batch_size} does not split over "
                f"{self.dist.world_size} processes"
            )
        self.batch_size = c.data.batch_size // self.dist.world_size
        last = self.run_dir / "last.pt"
        if resume and not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last} to resume from")
        if not resume and last.is_file():
            raise ConfigError(
                f"run.name: {self.run_dir} already holds a checkpoint; pass --resume to continue "
                "it or choose another run.name"
            )
        _seed_everything(c.run.seed + self.dist.rank)
        if c.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.train_set = build_dataset(c, c.data.train_split, train=True)
        self.val_set = build_dataset(c, c.data.val_split, train=False)
        if c.data.check_labels:
            self._check_labels()
        num_classes = self.train_set.num_classes
        model = build_model(c, num_classes, pretrained=not resume)
        stride = max(model.feature_strides)
        if any(size % stride for size in c.data.crop_size):
            raise ConfigError(
                f"data.crop_size: {c.data.crop_size} must be multiples of {stride}, the largest "
                f"stride of {c.model.name}'s features"
            )
        contrast = build_contrast(c, num_classes, model.feature_channels)
        self.model, self.contrast = model, contrast
        net = TrainingModule(model, contrast, c.model.aux_weight).to(self.device)
        if self.dist.world_size > 1:
            net = convert_sync_batchnorm(net, self.device)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        self.net = net
        self.optimizer = torch.optim.SGD(
            net.parameters(),
            lr=c.optim.lr,
            momentum=c.optim.momentum,
            weight_decay=c.optim.weight_decay,
        )
        self.scheduler = PolyLR(
            self.optimizer, c.optim.iters, c.optim.power, c.optim.warmup_iters, c.optim.warmup_ratio
        )
        self.amp_dtype = AMP_DTYPES.get(c.optim.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.optim.amp == "fp16")
        self.start_iter = 0
        self.best_miou = -math.inf
        self.unlabelled_batches = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._load(last)
        self.writer = None
        if self.dist.is_main:
            self._prepare_run_dir()

    def _check_labels(self) -> None:
        """Every label file of both splits read before the first iteration: a bad value or
        a split without a labelled pixel stops the run now, not hours later."""
        c = self.config
        where = c.data.root or c.data.dataset
        for key, split, dataset, purpose in (
            ("train_split", c.data.train_split, self.train_set, "train on"),
            ("val_split", c.data.val_split, self.val_set, "evaluate"),
        ):
            if not labelled_pixels(dataset, c.data.num_workers):
                raise DatasetError(
                    f"data.{key}: every label pixel of split {split!r} in {where} is "
                    f"{dataset.ignore_index} (ignore): nothing to {purpose}"
                )

    # ------------------------------------------------------------------ run directory

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"run.output_dir: cannot create {self.run_dir} ({error.strerror})"
            ) from None
        removed = remove_stale_temporaries(self.run_dir)
        (self.run_dir / "metrics").mkdir(exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config.to_yaml())
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler
        for path in removed:
            log.info(f"removed {path.name}, left by a write that was killed")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            log.info("tensorboard is not installed: no TensorBoard scalars")

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            log.info(message)
            progress = getattr(self, "_progress", None)
            if progress is not None:
                progress.write(message)  # keeps the bar intact
            else:
                print(message, flush=True)

    # ------------------------------------------------------------------ checkpoints

    def _state(self, iteration: int) -> dict[str, Any]:
        return {
            "version": contextrast.__version__,
            "iteration": iteration,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "contrast": self.contrast.state_dict() if self.contrast is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(self.device),
            "best_miou": self.best_miou,
            "unlabelled_batches": self.unlabelled_batches,
            "classes": list(self.train_set.classes),
            "palette": self.train_set.palette.tolist(),
        }

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        saved = state["config"]
        for section, key in (("loss", "name"), ("data", "dataset")):
            before, now = saved[section][key], getattr(getattr(self.config, section), key)
            if before != now:
                raise ConfigError(
                    f"{section}.{key}: {now!r} differs from {before!r} in the checkpoint {path}"
                )
        check_compatible(state, path, self.config, self.train_set.num_classes)
        load_weights(self.model, state["model"], path, "model")
        if self.contrast is not None:
            load_weights(self.contrast, state["contrast"], path, f"{self.config.loss.name} loss")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        # Each rank's RNG differs; the checkpoint holds rank 0's, so other ranks re-derive.
        if self.dist.rank == 0:
            restore_rng(state["rng"], self.device)
        else:
            _seed_everything(self.config.run.seed + self.dist.rank + state["iteration"])
        self.start_iter = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.unlabelled_batches = int(state.get("unlabelled_batches", 0))
        self._say(f"resumed from {path} at iteration {self.start_iter}")

    def _checkpoint(self, iteration: int, best: bool) -> None:
        if not self.dist.is_main:
            return
        state = self._state(iteration)
        save_checkpoint(state, self.run_dir / "last.pt")
        if best:
            save_checkpoint(state, self.run_dir / "best.pt")

    # ------------------------------------------------------------------ loop

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

    def _evaluate(self, iteration: int, seconds_per_iter: float) -> dict[str, Any]:
        evaluator = build_evaluator(self.config, self.val_set)
        metrics = evaluate(self.model, self.val_set, evaluator, self.config, self.device, self.dist)
        metrics.update({"iteration": iteration, "seconds_per_iter": seconds_per_iter})
        if self.dist.is_main:
            path = self.run_dir / "metrics" / f"iter_{iteration:07d}.json"
            path.write_text(metrics_json(metrics, indent=2) + "\n")
            with open(self.run_dir / "metrics.jsonl", "a") as handle:
                handle.write(metrics_json(metrics) + "\n")
            if self.writer is not None:
                self.writer.add_scalar("val/miou", metrics["miou"], iteration)
                self.writer.add_scalar("val/pixel_accuracy", metrics["pixel_accuracy"], iteration)
                for width, value in metrics["boundary_miou"].items():
                    self.writer.add_scalar(f"val/boundary_miou_{width}px", value, iteration)
            boundary = ", ".join(f"{w}px {v:.4f}" for w, v in metrics["boundary_miou"].items())
            self._say(
                f"eval @ {iteration}: mIoU {metrics['miou']:.4f}, pixel acc "
                f"{metrics['pixel_accuracy']:.4f}, boundary mIoU {boundary}"
            )
        return metrics

    def fit(self) -> dict[str, Any]:
        """Train to ``optim.iters``; returns the last evaluation's metrics.

        An error or interrupt that stops the run is written to ``train.log`` too, then
        raised; the last checkpoint stays the state to ``--resume`` from.
        """
        total = self.config.optim.iters
        self.iteration = self.start_iter
        try:
            if self.start_iter >= total:
                self._say(
                    f"{self.run_dir} already finished at iteration {self.start_iter} of {total}: "
                    "nothing to train (raise optim.iters to continue it)"
                )
                return self._last_metrics()
            return self._loop(total)
        except BaseException as error:
            if self.dist.is_main:
                what = "interrupted" if isinstance(error, KeyboardInterrupt) else "stopped"
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                log.error(
                    f"{what} at iteration {self.iteration}: {type(error).__name__}"
                    + (f": {reason}" if reason else "")
                )
            raise
        finally:
            self._close()

    def _last_metrics(self) -> dict[str, Any]:
        lines = (
            (self.run_dir / "metrics.jsonl").read_text().splitlines()
            if (self.run_dir / "metrics.jsonl").is_file()
            else []
        )
        return json.loads(lines[-1]) if lines else {}

    def _close(self) -> None:
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.close()
            self._progress = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            self._log_handler = None

    def _loop(self, total: int) -> dict[str, Any]:
        c = self.config
        self.net.train()
        progress = None
        if self.dist.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            progress = tqdm(total=total, initial=self.start_iter, dynamic_ncols=True)
        self._progress = progress
        sums = torch.zeros(len(LossTerms._fields), dtype=torch.float64, device=self.device)
        window_start, window_iters = time.perf_counter(), 0
        train_seconds, train_iters = 0.0, 0
        metrics: dict[str, Any] = {}
        iteration = self.start_iter
        self._say(
            f"training {c.model.name} with {c.loss.name} on {c.data.dataset} "
            f"for {total} iterations (from {self.start_iter}), {self.dist.world_size} process(es)"
        )
        for batch in self._loader():
            step_start = time.perf_counter()
            images = batch.image.to(self.device, non_blocking=True)
            target = batch.label.to(self.device, non_blocking=True)
            scale = 1.0 if iteration >= c.loss.contrast_warmup_iters else 0.0
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                try:
                    terms = self.net(images, target, scale)
                except NonFiniteError as error:  # raised by the contrastive loss's checks
                    raise FloatingPointError(
                        self._nonfinite(None, images, batch.index, iteration, str(error))
                    ) from None
            if not torch.isfinite(terms.total):
                raise FloatingPointError(self._nonfinite(terms, images, batch.index, iteration))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms.total).backward()
            if c.optim.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.net.parameters(), c.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            iteration += 1
            self.iteration = iteration
            elapsed = time.perf_counter() - step_start
            train_seconds += elapsed
            train_iters += 1
            sums += torch.stack([t.detach() for t in terms]).double()  # no host sync
            window_iters += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{terms.total.item():.3f}", lr=f"{lr:.2e}")
            if iteration % c.train.log_interval == 0 or iteration == total:
                self._log_window(iteration, total, sums, window_iters, window_start, lr)
                sums.zero_()
                window_start, window_iters = time.perf_counter(), 0
            best = False
            if iteration % c.train.eval_interval == 0 or iteration == total:
                metrics = self._evaluate(iteration, train_seconds / max(1, train_iters))
                if metrics["miou"] > self.best_miou:
                    self.best_miou, best = metrics["miou"], True
            if iteration % c.train.checkpoint_interval == 0 or iteration == total or best:
                self._checkpoint(iteration, best)
                barrier()
            if self.on_iteration is not None:
                self.on_iteration(iteration)
        return metrics

    def _log_window(
        self, iteration: int, total: int, sums: torch.Tensor, count: int, start: float, lr: float
    ) -> None:
        totals = all_reduce_sum(sums.clone()).tolist()
        loss, ce, aux, contrast = (value / (count * self.dist.world_size) for value in totals[:4])
        unlabelled = round(totals[4])
        self.unlabelled_batches += unlabelled
        seconds = (time.perf_counter() - start) / max(1, count)
        eta = seconds * (total - iteration)
        if self.writer is not None:
            for name, value in (("loss", loss), ("ce", ce), ("aux", aux), ("contrast", contrast)):
                self.writer.add_scalar(f"train/{name}", value, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)
        hours, rest = divmod(int(eta), 3600)
        self._say(
            f"it {iteration}/{total} | loss {loss:.4f} (ce {ce:.4f}, aux {aux:.4f}, "
            f"contrast {contrast:.4f}) | lr {lr:.2e} | {seconds:.3f} s/it | "
            f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}"
            + (f" | {unlabelled} batch(es) without labelled pixels (CE 0)" if unlabelled else "")
        )
        if self.writer is not None:
            self.writer.add_scalar("train/unlabelled_batches", self.unlabelled_batches, iteration)

    def _nonfinite(
        self,
        terms: LossTerms | None,
        images: torch.Tensor,
        indices: torch.Tensor,
        iteration: int,
        found: str = "",
    ) -> str:
        """A one-line account of a non-finite loss that names its cause (called once, on the
        failing step, so its host syncs cost nothing in a healthy run).

        terms: the step's loss terms, or None when the contrastive loss refused its
        non-finite features (``found`` says which).
        """
        if terms is None:
            head, shown = f"non-finite model features at iteration {iteration} ({found})", found
        else:
            parts = {name: getattr(terms, name).item() for name in ("ce", "aux", "contrast")}
            head = f"loss is {terms.total.item()} at iteration {iteration}"
            shown = ", ".join(f"{name} {value:.4g}" for name, value in parts.items())
        finite_images = torch.isfinite(images).flatten(1).all(1)  # (B,)
        if not bool(finite_images.all()):
            bad = indices[~finite_images.cpu()].tolist()
            return (
                f"{head}: the input batch holds NaN/inf pixel values (sample indices {bad} of "
                f"split {self.config.data.train_split!r}); check those images and "
                "model.mean/model.std"
            )
        broken = [
            name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())
        ]
        hint = (
            "fp16 overflowed: use optim.amp=bf16"
            if self.config.optim.amp == "fp16"
            else "lower optim.lr or set optim.grad_clip"
        )
        if broken:
            return (
                f"{head}: the model's weights are no longer finite (first: {broken[0]}); "
                f"training diverged: {hint}"
            )
        if terms is None or not (math.isfinite(parts["ce"]) and math.isfinite(parts["aux"])):
            return f"{head}: the model's outputs are not finite; {hint}"
        return (
            f"{head} ({shown}): the {self.config.loss.name!r} loss is not finite while CE is; "
            "lower its loss_weight or raise its temperature, or report it with this config"
        )
