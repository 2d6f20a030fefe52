"""One-shot check on a GPU: CUDA-vs-CPU equality of the loss, the ``gpu`` tests, the training
step's cost (CE vs Contextrast, eager and compiled), the loss at 150 classes, and kernel
launches and host syncs per step.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick   # every code path, on the CPU (CI)

Sections, in this order (``--sections`` picks some):

equality    ContextrastLoss with sampling off (``max_positives=max_negatives=max_pixels=None``),
            heads in eval mode, one state dict: the device's loss, its gradients (input features,
            head parameters) and BANE's hard-negative counts against the CPU's float32 (TF32
            off), and the float32 rounding floor (both against a CPU float64 copy). Cases:
            float32 (hard_negatives "add" and "only"): loss within 1e-5, head gradients within
            1e-4, feature gradients within 1e-4 per layer once the worst 0.01 % of pixels are
            left out (ReLU flips at inputs within rounding of 0; ``within_tolerances`` says
            whether all pixels are within 1e-4 too); bf16 autocast on the device: loss within
            2e-2. Hard-negative counts equal in every case. With ``--device cpu`` the
            "device" is a float64 copy on the CPU (bf16: CPU autocast).
gpu_tests   ``pytest -q -m gpu tests/test_gpu.py`` in a subprocess (CUDA only).
step        TrainingModule(create_model(...), contrast) steps (forward, backward, SGD), bf16
            autocast on CUDA: CE (contrast=None), ContextrastLoss and Contextrast++
            (adaptive fusion + anchor memory 100; ``pp_time_ratio`` / ``pp_memory_ratio``
            against Contextrast), median step time and peak memory. Full: hrnetv2_w48, batch
            8 x 3 x 512 x 1024, 19 classes.
classes150  The loss alone on hrnetv2_w48-shaped features of a 4 x 3 x 512 x 512 batch with 150
            and 171 classes (and 19 for scale): forward + backward of CE vs CE + Contextrast on
            the same logits, time and peak memory added (the default, dense pair form); from
            20 classes on also the sparse form's time (``sparse_time_ratio``).
launches    torch.profiler over one step of each: kernel launches, host syncs, aten ops.
compile     The step of ``step`` with the model compiled in place (``--compile-target model``,
            as the trainer's ``optim.compile``) or the whole TrainingModule's total
            (``module``); runs last, each compile under a wall-clock limit
            (``--compile-timeout``, and the total ``--budget``). Skipped with ``--no-compile``
            or ``--quick`` (unless ``--compile``).

Every section writes its part of one JSON dict, rewritten after each section (a kill keeps
what was done); a section that raises records ``{"error": "<one line>"}`` and the next one
runs. The exit status is 1 when a section failed or a check did not pass. Uses only the
public ``ContextrastLoss``, ``create_model`` and ``contextrast.engine.step.TrainingModule``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import check_out, write_result
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from contextrast import ContextrastLoss, create_model
from contextrast.engine.step import TrainingModule
from contextrast.functional.loss import SPARSE_FROM_CLASSES

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("equality", "gpu_tests", "step", "classes150", "launches", "compile")
HRNET_W48_CHANNELS = (48, 96, 192, 384)
IGNORE = 255
# CUDA runtime/driver calls that launch work: cudaLaunchKernel, cudaLaunchKernelExC,
# cuLaunchKernel (Triton), cuLaunchKernelEx, cudaLaunchCooperativeKernel, cudaGraphLaunch...
LAUNCH_PREFIXES = ("cudaLaunch", "cuLaunch", "cudaGraphLaunch")
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")
ATEN_SYNCS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select")
# Float32 case: relative error of the loss, and of the gradients' norms (per feature layer,
# and of all head parameters at once), device against CPU. bf16 autocast: of the loss only.
TOL_LOSS, TOL_GRAD, TOL_LOSS_BF16 = 1e-5, 1e-4, 2e-2


class Timeout(BaseException):
    """A wall-clock limit ran out (a BaseException, so that no ``except Exception`` inside
    torch.compile takes it for a compile error and falls back to eager)."""


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`Timeout` in the main thread after ``seconds`` (SIGALRM; POSIX)."""

    def expire(signum, frame):
        raise Timeout(f"over the {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def blocky_labels(
    batch: int, classes: int, size: tuple[int, int], block: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch, H, W) class ids constant on block x block squares: boundaries everywhere."""
    height, width = size
    shape = (batch, 1, max(1, height // block), max(1, width // block))
    coarse = torch.randint(0, classes, shape, generator=generator).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()


# ------------------------------------------------------------------------------------------
# equality


def _loss_run(loss, features, logits, target, dtype, autocast):
    """Loss value, hard-negative counts and gradients (float64, on the CPU) of one
    ``loss.terms`` call on copies of the inputs in ``dtype`` on the loss's device."""
    device = next(loss.parameters()).device
    leaves = [f.detach().to(device, dtype).clone().requires_grad_() for f in features]
    loss.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        terms = loss.terms(leaves, logits.to(device), target.to(device))
    terms.loss.backward()
    return {
        "loss": terms.loss.detach().double().cpu(),
        "hard": terms.hard_negatives.cpu(),
        "features": [f.grad.double().cpu() for f in leaves],
        "params": torch.cat([p.grad.double().cpu().flatten() for p in loss.parameters()]),
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of ``a`` against the reference ``b`` (norms)."""
    scale = float(b.norm())
    return float((a - b).norm()) / (scale if scale > 0 else 1.0)


def _trimmed(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """The relative error of (B, C, h, w) gradients without their worst 0.01 % of pixels (at
    least one), and the number of pixels whose gradient is off by more than 1 %.

    A ReLU of a projection head whose input is within rounding of 0 at one pixel switches
    that pixel's gradient path on one device and off on the other: a large error at a single
    pixel, however exact the rest (seen at the full shapes: one flip in 4 M units, 1e-3 of
    the layer's gradient norm)."""
    error = (a - b).pow(2).sum(1).flatten()  # per pixel
    scale = b.pow(2).sum(1).flatten()
    worst = max(1, error.numel() // 10_000)
    rest = error.sort().values[:-worst].sum()
    total = float(scale.sum())
    return (float(rest) / (total if total > 0 else 1.0)) ** 0.5, int((error > 1e-4 * scale).sum())


def _errors(got: dict, ref: dict) -> dict:
    layers = [_rel(a, b) for a, b in zip(got["features"], ref["features"])]
    trimmed = [_trimmed(a, b) for a, b in zip(got["features"], ref["features"])]
    return {
        "loss_rel": _rel(got["loss"], ref["loss"]),
        "feature_grad_rel": layers,
        "feature_grad_rel_max": max(layers),
        "feature_grad_rel_trimmed_max": max(t for t, _ in trimmed),
        "pixels_off_by_1pct": [n for _, n in trimmed],
        "head_grad_rel": _rel(got["params"], ref["params"]),
        "hard_negatives_equal": torch.equal(got["hard"], ref["hard"]),
    }


def equality(args, device):
    if args.quick:
        channels, size, batch, classes = (8, 16, 32, 64), (16, 32), 2, 10
    else:
        channels, size, batch, classes = HRNET_W48_CHANNELS, (128, 256), 2, 19
    g = torch.Generator().manual_seed(0)
    h, w = size  # the stride-4 map; the labels at 4x, the model's input size
    features = [torch.randn(batch, c, h >> i, w >> i, generator=g) for i, c in enumerate(channels)]
    target = blocky_labels(batch, classes, (4 * h, 4 * w), max(8, h // 4), g)
    target[:, : h // 4] = IGNORE  # an unlabelled band at the top
    # A prediction right in most places: the labels shifted by a few pixels, plus noise.
    shifted = torch.roll(target[:, ::4, ::4], shifts=(2, 3), dims=(1, 2)).clamp(max=classes - 1)
    logits = 3 * F.one_hot(shifted, classes).permute(0, 3, 1, 2).float()
    logits += torch.randn(batch, classes, h, w, generator=g)
    on_cpu = device.type == "cpu"
    cases = [("float32", "add"), ("float32", "only"), ("bf16", "add")]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    try:
        for precision, mode in cases:
            torch.manual_seed(0)
            options = dict(max_positives=None, max_negatives=None, max_pixels=None)
            reference = ContextrastLoss(classes, channels, hard_negatives=mode, **options)
            state = {
                k: v.normal_(0, 0.5)
                if k.endswith("running_mean")
                else v.uniform_(0.5, 2.0)
                if k.endswith("running_var")
                else v
                for k, v in reference.state_dict().items()
            }  # BatchNorm running statistics that are not the identity
            reference.load_state_dict(state)
            exact = ContextrastLoss(classes, channels, hard_negatives=mode, **options)
            exact.load_state_dict(state)
            tested = ContextrastLoss(classes, channels, hard_negatives=mode, **options)
            tested.load_state_dict(state)
            for module in (reference, exact, tested):
                module.eval()  # BatchNorm with running statistics, the same everywhere
            exact.double()
            bf16 = precision == "bf16"
            if on_cpu and not bf16:
                tested.double()  # CPU mode: float64 stands in for the device
                tested_dtype = torch.float64
            else:
                tested.to(device)
                tested_dtype = torch.float32
            ref = _loss_run(reference, features, logits, target, torch.float32, False)
            got = _loss_run(tested, features, logits, target, tested_dtype, bf16)
            if bf16:
                label = f"{device.type} bf16 autocast"
            else:
                label = "cpu float64" if on_cpu else f"{device.type} float32"
            case = {
                "tested": label,
                **_errors(got, ref),
                "hard_negatives": got["hard"].tolist(),
                "reference_grads_nonzero": all(float(f.abs().sum()) > 0 for f in ref["features"]),
            }
            if bf16:
                case["passed"] = case["loss_rel"] < TOL_LOSS_BF16 and case["hard_negatives_equal"]
            else:
                case["within_tolerances"] = (
                    case["loss_rel"] < TOL_LOSS
                    and case["feature_grad_rel_max"] < TOL_GRAD
                    and case["head_grad_rel"] < TOL_GRAD
                )
                # The float32 rounding floor: both against float64 on the CPU (informative: a
                # ReLU flip, see _trimmed, puts even the CPU's float32 1e-3 off float64).
                truth = _loss_run(exact, features, logits, target, torch.float64, False)
                dev, cpu = _errors(got, truth), _errors(ref, truth)
                case["tested_vs_float64"], case["cpu_float32_vs_float64"] = dev, cpu
                pairs = [
                    *zip(dev["feature_grad_rel"], cpu["feature_grad_rel"]),
                    (dev["loss_rel"], cpu["loss_rel"]),
                    (dev["head_grad_rel"], cpu["head_grad_rel"]),
                ]
                case["as_accurate_as_cpu"] = all(d <= 2 * c + 1e-7 for d, c in pairs)
                case["passed"] = (
                    case["loss_rel"] < TOL_LOSS
                    and case["feature_grad_rel_trimmed_max"] < TOL_GRAD
                    and case["head_grad_rel"] < TOL_GRAD
                    and case["hard_negatives_equal"]
                    and case["reference_grads_nonzero"]
                )
            results[f"{precision}, hard_negatives={mode}"] = case
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    setting = (
        f"features {list(channels)} at {h}x{w}/2^i, batch {batch}, {classes} classes, labels "
        f"{4 * h}x{4 * w}; sampling off; heads in eval mode; TF32 off"
    )
    return {
        "setting": setting,
        "tolerances": {"loss": TOL_LOSS, "grad": TOL_GRAD, "loss_bf16": TOL_LOSS_BF16},
        "cases": results,
        "passed": all(c["passed"] for c in results.values()),
    }


# ------------------------------------------------------------------------------------------
# gpu_tests


def gpu_tests(args, device):
    if device.type != "cuda":
        return {"skipped": "needs a CUDA device"}
    free(device)
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    command.append("tests/test_gpu.py")
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.test_timeout
        )
    except subprocess.TimeoutExpired as error:
        out = error.stdout or b""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return {
            "error": f"timed out after {args.test_timeout} s",
            "tail": out.strip().splitlines()[-20:],
        }
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {
        "command": " ".join(command),
        "returncode": done.returncode,
        "passed": done.returncode == 0,
        "seconds": round(time.perf_counter() - start, 1),
        "tail": lines[-20:],
    }


# ------------------------------------------------------------------------------------------
# the training step (step, launches, compile)


def step_config(args) -> dict:
    if args.quick:
        return dict(model="hrnetv2_w18_small", batch=2, size=(64, 128), classes=19, block=16,
                    warmup=1, steps=2)  # fmt: skip
    return dict(model="hrnetv2_w48", batch=8, size=(512, 1024), classes=19, block=32,
                warmup=3, steps=10)  # fmt: skip


#: (name, ContextrastLoss options or None for CE) of the step's arms
METHODS = (("ce", None), ("contextrast", {}))
#: Contextrast++ (issue 30): adaptive fusion and the anchor memory
PP = {"anchor_fusion": "adaptive", "anchor_memory": 100}


def describe(cfg: dict, amp: bool) -> str:
    height, width = cfg["size"]
    return (
        f"{cfg['model']}, batch {cfg['batch']} x 3 x {height} x {width}, {cfg['classes']} "
        f"classes, {'bf16 autocast' if amp else 'float32'}, SGD(momentum=0.9)"
    )


def build(
    cfg: dict, contrast: dict | None, device: torch.device, compile_target: str | None = None
):
    """``contrast``: ContextrastLoss's options ({} its defaults), or None for CE alone."""
    torch.manual_seed(0)  # the same initial weights for every method
    model = create_model(cfg["model"], num_classes=cfg["classes"], pretrained=False)
    loss = None
    if contrast is not None:
        loss = ContextrastLoss(cfg["classes"], model.feature_channels, **contrast)
    if loss is not None:
        loss.validate = False  # as the trainer runs it: labels checked once, no per-step sync
    net = TrainingModule(model, loss).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def forward(images, labels):
        return net(images, labels).total

    if compile_target == "model":
        model.compile()  # in place, as the trainer's optim.compile; the loss stays eager
    elif compile_target == "module":
        # Model, CE and the contrastive loss as one graph, with only the total leaving it:
        # a compiled TrainingModule returns CE's total (ce + 0.4·0 + 0 + 1.0·0, folded to ce)
        # beside ce.detach(), and inductor marks both non-differentiable (backward: "element
        # 0 of tensors does not require grad"; torch 2.14.1, pytorch/pytorch#195357).
        forward = torch.compile(forward)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(cfg["batch"], 3, *cfg["size"], generator=g)
    labels = blocky_labels(cfg["batch"], cfg["classes"], cfg["size"], cfg["block"], g)
    return forward, optimizer, images.to(device), labels.to(device)


def train_step(forward, optimizer, images, labels, amp: bool) -> torch.Tensor:
    """One step; ``forward(images, labels)`` is the TrainingModule's total loss."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        total = forward(images, labels)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total.detach()


def measure_step(cfg, device, contrast: dict | None, amp: bool, compile_target=None) -> dict:
    """Median time of ``cfg['steps']`` steps after ``cfg['warmup']``, and the peak memory."""
    forward, optimizer, images, labels = build(cfg, contrast, device, compile_target)
    cuda = device.type == "cuda"
    start = time.perf_counter()
    train_step(forward, optimizer, images, labels, amp)
    sync(device)
    first = time.perf_counter() - start
    for _ in range(cfg["warmup"] - 1):
        train_step(forward, optimizer, images, labels, amp)
    sync(device)
    if cuda:
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(cfg["steps"]):
        sync(device)
        start = time.perf_counter()
        total = train_step(forward, optimizer, images, labels, amp)
        sync(device)
        times.append(time.perf_counter() - start)
    result = {
        "ms_per_step": round(1000 * statistics.median(times), 2),
        "ms_each": [round(1000 * t, 2) for t in times],
        "first_step_s": round(first, 2),
        "loss": float(total),
        "peak_memory_mib": mib(torch.cuda.max_memory_allocated(device)) if cuda else None,
        "peak_added_mib": mib(torch.cuda.max_memory_allocated(device) - before) if cuda else None,
    }
    del forward, optimizer, images, labels
    free(device)
    return result


def _ratios(out: dict, a: str = "contextrast", b: str = "ce") -> None:
    x, y = out.get(a, {}), out.get(b, {})
    for key, field in (("time_ratio", "ms_per_step"), ("memory_ratio", "peak_memory_mib")):
        if x.get(field) and y.get(field):
            out[key] = round(x[field] / y[field], 3)


def step(args, device):
    cfg, amp = step_config(args), device.type == "cuda"
    out = {"setting": describe(cfg, amp), "warmup": cfg["warmup"], "steps": cfg["steps"]}
    for name, contrast in (*METHODS, ("contextrast_pp", PP)):
        try:
            out[name] = measure_step(cfg, device, contrast, amp)
        except Exception as error:
            traceback.print_exc()
            out[name] = {"error": one_line(error)}
            free(device)
        print(f"  step {name}: {json.dumps(out[name])}", flush=True)
    _ratios(out)
    # Contextrast++ against Contextrast (its paper: +2 % time, +0.5 % memory)
    pp = {k: out[k] for k in ("contextrast_pp", "contextrast") if k in out}
    _ratios(pp, "contextrast_pp", "contextrast")
    out.update({f"pp_{k}": v for k, v in pp.items() if k.endswith("ratio")})
    return out


def compiled(args, device, deadline: float, eager: dict | None):
    if args.no_compile:
        return {"skipped": "--no-compile"}
    if args.quick and not args.compile:
        return {"skipped": "--quick (add --compile to compile anyway)"}
    cfg, amp = step_config(args), device.type == "cuda"
    out = {"setting": describe(cfg, amp), "target": args.compile_target}
    for name, contrast in METHODS:
        left = deadline - time.monotonic()
        if left < 30:
            out[name] = {"skipped": f"{left:.0f} s left of --budget {args.budget:.0f} s"}
            continue
        limit = min(args.compile_timeout, left)
        try:
            with time_limit(limit):
                out[name] = measure_step(cfg, device, contrast, amp, args.compile_target)
            out[name]["limit_s"] = round(limit)
        except (Exception, Timeout) as error:
            traceback.print_exc()
            out[name] = {"error": one_line(error), "limit_s": round(limit)}
        finally:
            torch._dynamo.reset()
            free(device)
        print(f"  compile {name}: {json.dumps(out[name])}", flush=True)
    _ratios(out)
    if eager:
        for name in ("ce", "contextrast"):
            c, e = out.get(name, {}), eager.get(name, {})
            if c.get("ms_per_step") and e.get("ms_per_step"):
                out[f"{name}_speedup_over_eager"] = round(e["ms_per_step"] / c["ms_per_step"], 3)
    return out


def _counts(prof) -> dict[str, int]:
    return {e.key: e.count for e in prof.key_averages()}


def launches(args, device):
    cfg, amp = step_config(args), device.type == "cuda"
    cuda = device.type == "cuda"
    out = {
        "setting": describe(cfg, amp) + ", one step after two",
        "note": "cuda_syncs leaves out the profiler's closing torch.cuda.synchronize; "
        "aten_syncs are the ops that synchronise on CUDA (counted on the CPU too)",
    }
    for name, contrast in METHODS:
        forward, optimizer, images, labels = build(cfg, contrast, device)
        for _ in range(2):
            train_step(forward, optimizer, images, labels, amp)
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            train_step(forward, optimizer, images, labels, amp)
            sync(device)
        counts = _counts(prof)
        aten_syncs = {
            k: c
            for k, c in counts.items()
            if k in ATEN_SYNCS or k.startswith(("aten::unique", "aten::_unique"))
        }
        row = {
            "aten_ops": sum(c for k, c in counts.items() if k.startswith("aten::")),
            "aten_syncs": sum(aten_syncs.values()),
            "aten_syncs_by_op": aten_syncs,
        }
        if cuda:
            apis = {k: c for k, c in counts.items() if k.startswith(LAUNCH_PREFIXES)}
            row["launches"] = sum(apis.values())
            row["launches_by_api"] = apis
            row["device_kernels"] = sum(
                e.count
                for e in prof.key_averages()
                if e.device_type == DeviceType.CUDA and not e.key.startswith(("Memcpy", "Memset"))
            )
            row["cuda_syncs"] = max(0, sum(counts.get(k, 0) for k in CUDA_SYNCS) - 1)
            row["memcpy_async"] = counts.get("cudaMemcpyAsync", 0)
        out[name] = row
        del forward, optimizer, images, labels, prof
        free(device)
    for key in ("aten_ops", "aten_syncs", "launches", "cuda_syncs"):
        if key in out["ce"]:
            out[f"{key}_added"] = out["contextrast"][key] - out["ce"][key]
    return out


# ------------------------------------------------------------------------------------------
# classes150


def measure_call(run, device, repeats: int) -> dict:
    run()  # warm-up
    sync(device)
    cuda = device.type == "cuda"
    if cuda:
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return {
        "ms": round(1000 * statistics.median(times), 2),
        "peak_added_mib": mib(torch.cuda.max_memory_allocated(device) - before) if cuda else None,
    }


def classes150(args, device):
    if args.quick:
        batch, size, channels, block, repeats = 2, (64, 64), (8, 16, 32, 64), 8, 2
        class_counts = (150,)
    else:
        batch, size, channels, block, repeats = 4, (512, 512), HRNET_W48_CHANNELS, 32, 10
        class_counts = (19, 150, 171)
    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp else torch.float32
    h, w = size[0] // 4, size[1] // 4
    out = {
        "setting": f"features {list(channels)} at {h}x{w}/2^i ({dtype}), logits (B, N, {h}, "
        f"{w}), labels {batch}x{size[0]}x{size[1]}; forward + backward of CE (logits upsampled "
        f"to the labels) and of CE + ContextrastLoss(N, channels) (train mode, defaults); "
        f"median of {repeats}; peak memory added over the inputs",
    }
    for classes in class_counts:
        g = torch.Generator().manual_seed(0)
        features = [
            torch.randn(batch, c, h >> i, w >> i, generator=g).to(device, dtype).requires_grad_()
            for i, c in enumerate(channels)
        ]
        logits = torch.randn(batch, classes, h, w, generator=g).to(device, dtype)
        logits.requires_grad_()
        target = blocky_labels(batch, classes, size, block, g).to(device)
        loss = ContextrastLoss(classes, list(channels)).to(device)
        sparse = ContextrastLoss(classes, list(channels), pair_form="sparse").to(device)
        sparse.load_state_dict(loss.state_dict())
        labelled = (target != IGNORE).sum().clamp(min=1)
        leaves = [*features, logits]

        def run(contrast, leaves=leaves, target=target, labelled=labelled):
            for leaf in leaves:
                leaf.grad = None
            *feats, lgts = leaves
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                up = F.interpolate(lgts, size=target.shape[-2:], mode="bilinear")
                total = (
                    F.cross_entropy(up.float(), target, ignore_index=IGNORE, reduction="sum")
                    / labelled
                )
                if contrast is not None:
                    contrast.zero_grad(set_to_none=True)
                    total = total + contrast(feats, lgts, target)
            total.backward()

        ce = measure_call(lambda run=run: run(None), device, repeats)
        both = measure_call(lambda run=run, loss=loss: run(loss), device, repeats)
        row = {"ce": ce, "ce_plus_contextrast": both, "pair_form": "dense"}
        if classes >= SPARSE_FROM_CLASSES:  # where "auto" takes the sparse form: it too
            forced = measure_call(lambda run=run, sparse=sparse: run(sparse), device, repeats)
            row["ce_plus_contextrast_sparse"] = forced
            row["sparse_time_ratio"] = round(forced["ms"] / ce["ms"], 3)
        row["loss_added_ms"] = round(both["ms"] - ce["ms"], 2)
        row["time_ratio"] = round(both["ms"] / ce["ms"], 3)
        if amp:
            row["loss_added_peak_mib"] = round(both["peak_added_mib"] - ce["peak_added_mib"], 1)
            row["memory_ratio"] = round(both["peak_added_mib"] / ce["peak_added_mib"], 3)
        out[f"classes_{classes}"] = row
        del features, logits, target, loss, sparse, leaves, run
        free(device)
    return out


# ------------------------------------------------------------------------------------------
# report


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def summary_rows(results: dict) -> list[dict]:
    """case | CE | Contextrast | ratio, from whatever sections have run."""
    rows = []

    def add(case, ce, ctr, digits=1):
        ratio = round(ctr / ce, 3) if ce and ctr is not None else None
        rows.append({"case": case, "ce": ce, "contextrast": ctr, "ratio": ratio, "digits": digits})

    for section, label in (("step", "step, eager"), ("compile", "step, compiled")):
        part = results.get(section, {})
        ce, ctr = part.get("ce", {}), part.get("contextrast", {})
        if "ms_per_step" in ce or "ms_per_step" in ctr:
            add(f"{label}: ms/step", ce.get("ms_per_step"), ctr.get("ms_per_step"))
            if ce.get("peak_memory_mib") is not None:
                add(f"{label}: peak MiB", ce.get("peak_memory_mib"), ctr.get("peak_memory_mib"), 0)
    for key, part in results.get("classes150", {}).items():
        if key.startswith("classes_") and isinstance(part, dict):
            n = key.removeprefix("classes_")
            ce, both = part["ce"], part["ce_plus_contextrast"]
            add(f"loss fwd+bwd, {n} classes: ms (CE vs CE + Contextrast)", ce["ms"], both["ms"], 2)
            if "ce_plus_contextrast_sparse" in part:
                sparse = part["ce_plus_contextrast_sparse"]["ms"]
                add(f"loss fwd+bwd, {n} classes, sparse pair form: ms", ce["ms"], sparse, 2)
            if ce["peak_added_mib"] is not None:
                add(f"loss fwd+bwd, {n} classes: peak MiB added", ce["peak_added_mib"],
                    both["peak_added_mib"], 0)  # fmt: skip
    part = results.get("launches", {})
    if "ce" in part and "contextrast" in part:
        for key, label in (("launches", "kernel launches / step"),
                           ("cuda_syncs", "host syncs (CUDA runtime) / step"),
                           ("aten_syncs", "syncing aten ops / step"),
                           ("aten_ops", "aten ops / step")):  # fmt: skip
            if key in part["ce"]:
                add(label, part["ce"][key], part["contextrast"][key], 0)
    return rows


def yes(flag) -> str:
    return "–" if flag is None else "yes" if flag else "NO"


def markdown(results: dict, header: str) -> str:
    lines = [header, "", "| case | CE | Contextrast | ratio |", "|---|---:|---:|---:|"]
    for r in summary_rows(results):
        lines.append(
            f"| {r['case']} | {_fmt(r['ce'], r['digits'])} | {_fmt(r['contextrast'], r['digits'])}"
            f" | {_fmt(r['ratio'], 2)} |"
        )
    cases = results.get("equality", {}).get("cases", {})
    if cases:
        lines += [
            "",
            "| equality case | tested | loss rel. err | feature grad rel. err (max layer; "
            "without the worst 0.01 % px) "
            "| head grad rel. err | hard negatives equal | within tol. | as accurate as CPU "
            "(vs float64) | pass |",
            "|---|---|---:|---:|---:|---|---|---|---|",
        ]
        for name, c in cases.items():
            lines.append(
                f"| {name} | {c['tested']} | {c['loss_rel']:.1e} | "
                f"{c['feature_grad_rel_max']:.1e}; {c['feature_grad_rel_trimmed_max']:.1e} | "
                f"{c['head_grad_rel']:.1e} | "
                f"{yes(c['hard_negatives_equal'])} | {yes(c.get('within_tolerances'))} | "
                f"{yes(c.get('as_accurate_as_cpu'))} | {yes(c['passed'])} |"
            )
    return "\n".join(lines)


def failures(results: dict) -> list[str]:
    bad = []
    for name, part in results.items():
        if "error" in part:
            bad.append(f"{name}: {part['error']}")
        if part.get("passed") is False:
            bad.append(f"{name}: did not pass")
        for key, sub in part.items():
            if isinstance(sub, dict) and "error" in sub:
                bad.append(f"{name}.{key}: {sub['error']}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CI on the CPU)")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--no-compile", action="store_true", help="skip the compile section")
    parser.add_argument("--compile", action="store_true", help="compile under --quick too")
    parser.add_argument("--compile-target", choices=("model", "module"), default="model")
    parser.add_argument("--compile-timeout", type=float, default=150.0,
                        help="seconds for each compiled variant (compile + steps)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=370.0,
                        help="seconds from the start after which no compile is begun or left "
                        "running")  # fmt: skip
    parser.add_argument("--test-timeout", type=float, default=120.0)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's; 1 for --quick on the CPU, where on a shared "
        "2-core machine two threads mostly wait on each other)",
    )
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a device (cpu, cuda, cuda:1, ...)")
    check_out(args.out)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: must be >= 1, got {args.threads}")
    if args.threads is None and args.quick and device.type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    deadline = start + args.budget
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: pass --device cpu", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    fields = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "quick": args.quick,
        "cpu_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    header = (
        f"{fields['started'][:10]}, {name}, torch {torch.__version__}"
        f"{', quick shapes' if args.quick else ''}"
    )
    print(header, flush=True)
    results: dict[str, dict] = {}
    runners = {
        "equality": lambda: equality(args, device),
        "gpu_tests": lambda: gpu_tests(args, device),
        "step": lambda: step(args, device),
        "classes150": lambda: classes150(args, device),
        "launches": lambda: launches(args, device),
        "compile": lambda: compiled(args, device, deadline, results.get("step")),
    }
    for section in SECTIONS:
        if section not in args.sections:
            continue
        print(f"== {section}", flush=True)
        began = time.monotonic()
        try:
            results[section] = runners[section]()
        except Exception as error:
            traceback.print_exc()
            results[section] = {"error": one_line(error)}
            free(device)
        results[section]["seconds"] = round(time.monotonic() - began, 1)
        print(json.dumps(results[section], indent=1), flush=True)
        rows = [{k: v for k, v in r.items() if k != "digits"} for r in summary_rows(results)]
        write_result(args.out, "gpu_check", rows, **fields, sections=results,
                     elapsed_s=round(time.monotonic() - start, 1))  # fmt: skip
    print()
    print(markdown(results, header))
    bad = failures(results)
    print(f"\n{len(bad)} failures" + "".join(f"\n  {b}" for b in bad))
    print(f"total {time.monotonic() - start:.1f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
