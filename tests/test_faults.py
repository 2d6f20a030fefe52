"""The fault suite: each bad input or real-world fault is built on the fly and its exact
behaviour asserted.

CLI faults end in exit status 2 and one stderr line naming the file, key or value (1 for
``check-data``, which reports problems); API faults raise ``ValueError`` or give a defined
finite result; the faults a run must survive (crops without labels, killed writes, finished
runs) are survived.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contextrast import cli
from contextrast.config import ConfigError, config_from_dict
from contextrast.contrast import (
    ContextrastLoss,
    MultiScaleCrossScaleLoss,
    NonFiniteError,
    PixelContrastLoss,
    PixelContrastMemory,
    RegionContrastLoss,
)
from contextrast.data import Folder, check_dataset
from contextrast.engine.trainer import IterationBatchSampler, Trainer, TrainingModule
from contextrast.evaluation.metrics import metrics_json
from contextrast.models import create_model
from contextrast.utils import checkpoint as ckpt
from tests.engine.runs import config, learnable_folder


def write_config(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def fails(capsys, *argv, match: str, code: int = 2) -> str:
    """Run the CLI; assert the exit status and one stderr line containing ``match``."""
    assert cli.main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err
    return err


def write_label(path: Path, value: int | np.ndarray, size: int = 32) -> None:
    values = np.full((size, size), value) if np.isscalar(value) else value
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)


@pytest.fixture()
def data(tmp_path) -> Path:
    return learnable_folder(tmp_path / "data", count=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-iteration run (2 classes, hrnetv2_w18_small, contextrast)."""
    tmp = tmp_path_factory.mktemp("faults")
    learnable_folder(tmp / "data", count=4)
    path = write_config(tmp / "run.yaml", config(tmp, "done", optim={"iters": 2}))
    assert cli.main(["train", str(path)]) == 0
    return tmp, path, tmp / "runs" / "done" / "last.pt"


def three_class_folder(root: Path) -> Path:
    learnable_folder(root, count=4)
    (root / "classes.txt").write_text("dark\nred\nblue\n")
    return root


# ------------------------------------------------------------ 1. crops without a labelled pixel


def test_all_ignore_crops_train_through_with_exactly_zero_ce(tmp_path, monkeypatch):
    # 64 × 64 so that batches of one image keep 2 × 2 deepest maps (BatchNorm needs > 1 value).
    root = learnable_folder(tmp_path / "data", count=4, size=64)
    write_label(root / "labels" / "train" / "1.png", 255, size=64)
    sections = {
        "data": {"batch_size": 1, "crop_size": [64, 64]},
        "optim": {"iters": 4},
        "train": {"log_interval": 2},
    }
    trainer = Trainer(config_from_dict(config(tmp_path, "survives", **sections)))
    trainer.fit()
    sampler = IterationBatchSampler(4, 1, 0, 1, seed=3, start=0, total=4)
    drawn = sum(batch[0] % 4 == 1 for batch in sampler)
    assert drawn == 1 and trainer.unlabelled_batches == drawn  # one epoch
    log = (trainer.run_dir / "train.log").read_text()
    logged = [
        int(line.split(" batch(es) without labelled pixels")[0].rsplit("| ", 1)[1])
        for line in log.splitlines()
        if "without labelled pixels" in line
    ]
    assert sum(logged) == drawn

    def reference_ce(self, logits, target, labelled):
        """The definition: mean CE where there are labels, an explicit zero where not."""
        size = target.shape[-2:]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if bool((target != self.ignore_index).any()):
            return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        return logits.sum() * 0.0

    monkeypatch.setattr(TrainingModule, "_ce", reference_ce)
    reference = Trainer(config_from_dict(config(tmp_path, "reference", **sections)))
    reference.fit()
    a, b = (ckpt.load_checkpoint(t.run_dir / "last.pt") for t in (trainer, reference))
    for part in ("model", "contrast"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)


def test_ce_of_a_batch_without_labels_is_zero_with_a_graph():
    model = create_model("hrnetv2_w18_small", num_classes=3)
    net = TrainingModule(model, ContextrastLoss(3, model.feature_channels, embed_dim=8))
    terms = net(torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), 255))
    terms.total.backward()
    assert terms.total.item() == 0.0 and terms.unlabelled.item() == 1.0
    assert all(p.grad is not None for p in net.parameters())  # every rank joins DDP's reduce


# ------------------------------------------------------------ 2, 3, 5. splits and label files


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_labelled_pixels_stops_before_training(tmp_path, data, capsys, split):
    for label in (data / "labels" / split).glob("*.png"):
        write_label(label, 255)
    path = write_config(tmp_path / "c.yaml", config(tmp_path))
    fails(
        capsys,
        "train",
        path,
        match=f"data.{split}_split: every label pixel of split '{split}' in {data} is 255 "
        "(ignore): nothing to",
    )
    assert not (tmp_path / "runs" / "run").exists()  # nothing half-made
    code = cli.main(["check-data", "--dataset", "folder", "--root", str(data), "--split", split])
    assert code == 1 and "no labelled pixel" in capsys.readouterr().out


def test_bad_validation_label_stops_before_the_first_iteration(tmp_path, data, capsys):
    label = np.zeros((32, 32))
    label[3, 4] = 9
    write_label(data / "labels" / "val" / "2.png", label)
    path = write_config(tmp_path / "c.yaml", config(tmp_path))
    expected = f"{data}/labels/val/2.png: label values [9] are not folder labels"
    fails(capsys, "train", path, match=expected)
    assert not (tmp_path / "runs" / "run").exists()
    # The switch turns the scan off: the same file then stops the first evaluation.
    fails(capsys, "train", path, "--set", "data.check_labels=false", match=expected)
    assert not (tmp_path / "runs" / "run" / "metrics.jsonl").exists()


def test_an_empty_split_is_a_problem_with_its_folder_named(tmp_path, data, capsys):
    for image in (data / "images" / "val").iterdir():
        image.unlink()
    message = f"folder: no image/label pairs found in split 'val' ({data}/images/val)"
    report = check_dataset("folder", root=data, split="val")
    assert report.samples == 0 and report.problems == [message]
    assert report.counts == {"empty split": 1}
    args = ["check-data", "--dataset", "folder", "--root", data, "--split", "val"]
    assert cli.main([str(a) for a in args]) == 1 and message in capsys.readouterr().out
    fails(capsys, "train", write_config(tmp_path / "c.yaml", config(tmp_path)), match=message)
    with pytest.raises(ValueError, match="no image/label pairs found in split 'val'"):
        Folder(data, split="val")


def test_an_all_ignore_split_is_an_error_at_evaluation_not_a_nan(trained, tmp_path, capsys):
    _, path, checkpoint = trained
    root = learnable_folder(tmp_path / "ignored", count=2)
    for label in (root / "labels" / "val").glob("*.png"):
        write_label(label, 255)
    fails(
        capsys,
        "eval",
        path,
        "--checkpoint",
        checkpoint,
        "--set",
        f"data.root={root}",
        "--out",
        tmp_path / "m.json",
        match="folder: the 2 evaluated images have no labelled pixel",
    )
    assert not (tmp_path / "m.json").exists()


def test_metrics_files_hold_null_not_nan():
    text = metrics_json({"miou": 0.5, "iou": {"a": float("nan"), "b": 1.0}, "x": [float("inf")]})
    assert json.loads(text) == {"miou": 0.5, "iou": {"a": None, "b": 1.0}, "x": [None]}
    assert "NaN" not in text and "Infinity" not in text


# ------------------------------------------------------------ 4. checkpoint against config


def test_checkpoint_and_config_that_differ_give_one_line_naming_both(trained, tmp_path, capsys):
    tmp, path, checkpoint = trained
    three = three_class_folder(tmp_path / "three")
    fails(
        capsys,
        "eval",
        path,
        "--checkpoint",
        checkpoint,
        "--set",
        f"data.root={three}",
        match=f"checkpoint {checkpoint} holds another model (the class count differs): it has "
        "model hrnetv2_w18_small with 2 classes, the config and dataset build model "
        "hrnetv2_w18_small with 3 classes",
    )
    for command in (["predict", tmp / "data" / "images" / "val", "--out", tmp_path / "p"],
                    ["export", "--out", tmp_path / "m.pt2"]):  # fmt: skip
        fails(
            capsys,
            *command,
            "--checkpoint",
            checkpoint,
            "--set",
            "model.name=tu-resnet18",
            "--set",
            "model.head=ocr",
            match="holds another model (model.name, model.head differ): it has model "
            "hrnetv2_w18_small with 2 classes, the config and dataset build model tu-resnet18, "
            "head ocr with 2 classes",
        )
    fails(
        capsys,
        "export",
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "m.pt2",
        "--set",
        "model.aux=true",
        match="(model.aux differs): it has model hrnetv2_w18_small with 2 classes, the config "
        "and dataset build model hrnetv2_w18_small, aux True with 2 classes",
    )
    assert not (tmp_path / "m.pt2").exists()


def test_resume_with_another_model_or_loss_size_is_one_line_and_logged(trained, capsys):
    tmp, path, checkpoint = trained
    three = three_class_folder(tmp / "three")
    fails(
        capsys,
        "train",
        path,
        "--resume",
        "--set",
        f"data.root={three}",
        match="it has model hrnetv2_w18_small with 2 classes, the config and dataset build "
        "model hrnetv2_w18_small with 3 classes",
    )
    fails(
        capsys,
        "train",
        path,
        "--resume",
        "--set",
        "loss.contrast.embed_dim=32",
        match="--resume: loss.contrast.embed_dim 16 -> 32 differs from the checkpoint",
    )
    fails(
        capsys,
        "train",
        path,
        "--resume",
        "--accept-changes",
        "--set",
        "loss.contrast.embed_dim=32",
        match=f"checkpoint {checkpoint}: its contextrast loss weights do not fit the "
        "contextrast loss this config builds (heads.0.net.3.weight is (16, 18, 1, 1) there, "
        "(32, 18, 1, 1) here)",
    )
    log = (checkpoint.parent / "train.log").read_text().splitlines()
    assert log[-1].endswith("(32, 18, 1, 1) here)") and "not started: checkpoint" in log[-1]


# ------------------------------------------------------------ 6. config errors name the cause


def test_an_unknown_model_is_named_before_its_head(tmp_path, data, capsys):
    path = write_config(tmp_path / "c.yaml", config(tmp_path))
    fails(
        capsys,
        "train",
        path,
        "--set",
        "model.name=resnet9000",
        "--set",
        "model.head=ocr",
        match="model.name: unknown model 'resnet9000'; choose from ['deeplabv3_r101',",
    )
    fails(
        capsys,
        "train",
        path,
        "--set",
        "model.head_width=64",
        match="model.head / model.head_width: only for 'tu-<timm name>' models; the preset "
        "'hrnetv2_w18_small' fixes its head",
    )
    fails(capsys, "train", path, "--set", "model.std=[0.2,0,0.2]", match="model.std: must be")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.head_width", 0, "must be >= 1 or null"),
        ("model.std", [0.2, 0, 0.2], "must be 3 values (R, G, B), each finite and > 0"),
        ("model.mean", [0.5, 0.5], "must be 3 finite values (R, G, B)"),
        ("model.aux_weight", -1.0, "must be finite and >= 0"),
        ("model.aux_weight", float("inf"), "must be finite and >= 0"),
        ("data.num_workers", -1, "must be >= 0"),
        ("run.seed", -1, "must be in [0, 2**32)"),
        ("optim.power", -1.0, "must be finite and >= 0"),
        ("optim.power", float("inf"), "must be finite and >= 0"),
        ("optim.warmup_iters", -1, "must be >= 0"),
        ("optim.warmup_ratio", 2.0, "must be in [0, 1]"),
        ("optim.grad_clip", 0.0, "must be > 0 or null"),
        ("loss.contrast_warmup_iters", -5, "must be >= 0"),
        ("eval.scales", [1.0, 0.0], "must all be finite and > 0"),
        ("eval.scales", [float("inf")], "must all be finite and > 0"),
        ("eval.boundary_widths", [0], "must be >= 1"),
        ("eval.object_sizes", [16, 32], "must be three increasing side lengths in [1, 65536]"),
        ("eval.object_sizes", [32, 16, 96], "must be three increasing side lengths in [1, 65536]"),
        ("eval.object_sizes", [16, 32, 10**10], "must be three increasing side lengths in [1, "),
        ("eval.max_images", 0, "must be >= 1 or null"),
    ],
)
def test_values_that_would_train_wrongly_are_config_errors(key, value, message):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(f"{key}: {message}")):
        config_from_dict({section: {name: value}})


def test_a_stop_step_the_schedule_never_reaches_is_a_config_error():
    base = {"loss": {"name": "contextrast", "contrast": {"stop_step": 50}}}
    late = {"loss": {**base["loss"], "contrast_warmup_iters": 50}}
    with pytest.raises(
        ConfigError,
        match=r"loss.contrast.stop_step: must be above loss.contrast_warmup_iters \(50\)",
    ):
        config_from_dict(late)
    with pytest.raises(
        ConfigError, match=r"loss.contrast.stop_step: must be below optim.iters \(40\)"
    ):
        config_from_dict({**base, "optim": {"iters": 40}})
    assert config_from_dict({**base, "optim": {"iters": 400}}).loss.contrast.stop_step == 50
    # another loss ignores the key (configs list every section)
    assert config_from_dict({"loss": {"name": "ce", "contrast": {"stop_step": 5000}}})


def test_an_unwritable_output_dir_names_the_key(tmp_path, data, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_config(tmp_path / "c.yaml", config(tmp_path))
    fails(
        capsys,
        "train",
        path,
        "--set",
        f"run.output_dir={blocker}",
        match=f"run.output_dir: cannot create {blocker}/run (Not a directory)",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, data, capsys):
    path = write_config(tmp_path / "c.yaml", config(tmp_path))
    fails(capsys, "train", path, "--set", "run.device=cuda", match="run.device: 'cuda' (GPU 0)")


def test_head_width_sets_the_hrnetv2_heads_fused_width():
    default = create_model("tu-resnet18", 3, head="hrnetv2")
    narrow = create_model("tu-resnet18", 3, head="hrnetv2", head_width=32)
    width = sum(default.feature_channels)
    assert default.decode_head.fuse[0].out_channels == width
    assert narrow.decode_head.fuse[0].out_channels == 32
    assert narrow.decode_head.classifier.in_channels == 32
    parameters = [sum(p.numel() for p in m.decode_head.parameters()) for m in (default, narrow)]
    # conv (width → w, no bias) + BN (2w) + classifier (w → 3, bias)
    assert parameters == [width * w + 2 * w + 3 * w + 3 for w in (width, 32)]
    with pytest.raises(ValueError, match="head_width must be a positive int, got 0"):
        create_model("tu-resnet18", 3, head_width=0)


# ------------------------------------------------------------ 7. killed checkpoint writes


def test_a_resumed_run_removes_the_temporaries_of_killed_writes(trained, capsys):
    _, path, checkpoint = trained
    folder = checkpoint.parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = folder / f".last.pt.{int(dead.stdout)}.tmp"
    live = folder / f".best.pt.{os.getppid()}.tmp"  # a process that is still running
    for temporary in (stale, live):
        temporary.write_bytes(b"\0" * 1024)
    assert cli.main(["train", str(path), "--resume", "--set", "optim.iters=3"]) == 0
    assert not stale.exists() and live.exists()
    assert (
        f"removed {stale.name}, left by a write that was killed"
        in (folder / "train.log").read_text()
    )
    live.unlink()
    capsys.readouterr()


# ------------------------------------------------------------ 8. the losses' API


LOSSES = {
    "contextrast": lambda c: ContextrastLoss(3, c, embed_dim=8),
    "pixel_contrast": lambda c: PixelContrastLoss(3, c, embed_dim=8),
    "pixel_memory": lambda c: PixelContrastMemory(PixelContrastLoss(3, c, embed_dim=8)),
    "ms_cs": lambda c: MultiScaleCrossScaleLoss(3, c, embed_dim=8),
    "region_contrast": lambda c: RegionContrastLoss(3, c, embed_dim=8),
}
CHANNELS = [4, 6, 8, 10]


def inputs(batch: int = 2, size: int = 8):
    g = torch.Generator().manual_seed(0)
    features = [
        torch.randn(batch, c, max(1, size >> i), max(1, size >> i), generator=g)
        for i, c in enumerate(CHANNELS)
    ]
    logits = torch.randn(batch, 3, size, size, generator=g)
    target = torch.randint(0, 3, (batch, 2 * size, 2 * size), generator=g)
    return features, logits, target


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_computed_in_the_heads_precision(name, dtype):
    loss = LOSSES[name](CHANNELS)
    features, logits, target = inputs()
    half = [f.to(dtype) for f in features]
    twin = copy.deepcopy(loss)  # queue losses change state per call
    torch.manual_seed(1)
    value = loss(half, logits, target)
    torch.manual_seed(1)
    expected = twin([f.float() for f in half], logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.equal(value, expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_value_per_channel_is_a_clear_error_in_training_only(name):
    loss = LOSSES[name](CHANNELS)
    features, logits, target = inputs(batch=1, size=4)  # the last two maps are 1 × 1
    with pytest.raises(ValueError, match=r"features\[2\] has one value per channel"):
        loss(features, logits, target)
    assert torch.isfinite(loss.eval()(features, logits, target))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_non_finite_features_raise_instead_of_a_nan_loss(name):
    loss = LOSSES[name](CHANNELS)
    features, logits, target = inputs()
    features[2][0, 1, 0, 0] = float("nan")
    features[0][1, 0, 1, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"features\[0, 2\] hold NaN or inf values"):
        loss(features, logits, target)
    assert issubclass(NonFiniteError, ValueError)


# ------------------------------------------------------------ non-finite losses name a cause


def test_diverged_weights_are_named_as_the_cause(tmp_path, data):
    c = config_from_dict(config(tmp_path, optim={"iters": 4}))

    def poison(iteration):
        if iteration == 1:
            with torch.no_grad():
                trainer.model.decode_head.classifier.weight[0, 0] = float("inf")

    trainer = Trainer(c, on_iteration=poison)
    with pytest.raises(FloatingPointError) as error:
        trainer.fit()
    message = str(error.value)
    assert message.startswith("loss is nan at iteration 2 (ce nan, aux 0,") and "\n" not in message
    assert "the model's outputs are not finite (weights no longer finite, first: " in message
    assert message.endswith("training diverged: lower optim.lr or set optim.grad_clip")
    last = (c.run_dir / "train.log").read_text().splitlines()[-1]
    assert "stopped at iteration 2: FloatingPointError: loss is nan at iteration 2" in last


@pytest.mark.parametrize("loss", ["ce", "contextrast"])  # found at the log point / at once
def test_non_finite_input_pixels_are_named_with_their_samples(tmp_path, data, monkeypatch, loss):
    original = Folder.__getitem__

    def broken(self, index):
        sample = original(self, index)
        if (
            sample.index == 2
            and self.transform is not None
            and sample.image.dtype.is_floating_point
        ):
            sample.image[0, 0, 0] = float("nan")
        return sample

    monkeypatch.setattr(Folder, "__getitem__", broken)
    c = config_from_dict(
        config(tmp_path, data={"batch_size": 4}, optim={"iters": 1}, loss={"name": loss})
    )
    with pytest.raises(FloatingPointError, match=r"the input batch holds NaN/inf pixel values "
                       r"\(sample indices \[2\] of split 'train'\)"):  # fmt: skip
        Trainer(c).fit()


# ------------------------------------------------------------ 9. what a stopped run leaves


def test_an_error_that_stops_training_is_in_train_log(tmp_path, data):
    c = config_from_dict(config(tmp_path, optim={"iters": 6}))

    def fail(iteration):
        if iteration == 3:
            raise OSError("No space left on device")

    with pytest.raises(OSError):
        Trainer(c, on_iteration=fail).fit()
    last = (c.run_dir / "train.log").read_text().splitlines()[-1]
    assert last.endswith("stopped at iteration 3: OSError: No space left on device")
    assert ckpt.load_checkpoint(c.run_dir / "last.pt")["iteration"] == 2  # kept


def test_resume_of_a_finished_run_says_so(trained, capsys):
    _, path, checkpoint = trained
    before = checkpoint.read_bytes()
    iterations = ckpt.load_checkpoint(checkpoint)["iteration"]
    assert cli.main(["train", str(path), "--resume", "--set", f"optim.iters={iterations}"]) == 0
    out = capsys.readouterr().out
    assert f"already finished at iteration {iterations} of {iterations}: nothing to train" in out
    assert "final mIoU" in out and checkpoint.read_bytes() == before


@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGINT"], ["SIGINT", "SIGINT"]])
def test_a_signal_stops_training_with_a_logged_line_and_a_resumable_run(tmp_path, data, signals):
    """SIGTERM (pre-emption) and Ctrl-C both finish the step and save it; a second Ctrl-C
    stops at once. The one line says which iteration last.pt holds, and it does."""
    path = write_config(tmp_path / "c.yaml", config(tmp_path, "preempted", optim={"iters": 10000}))
    log = tmp_path / "runs" / "preempted" / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "contextrast.cli", "train", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (log.is_file() and "it 3/" in log.read_text()):  # past the checkpoint at 2
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    for name in signals:
        process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    held = int(last.split("last.pt holds iteration ")[1].split(";")[0])
    assert last == (
        f"contextrast train: interrupted ({signals[-1]}); {log.parent / 'last.pt'} holds "
        f"iteration {held}; continue with --resume"
    )
    assert ckpt.load_checkpoint(log.parent / "last.pt")["iteration"] == held  # as it says
    lines = log.read_text().splitlines()
    stopped = int(lines[-1].split("interrupted at iteration ")[1].split(":")[0])
    if len(signals) == 1:  # the step in flight finishes and is saved: nothing lost
        assert held == stopped >= 3 and lines[-1].endswith(f"KeyboardInterrupt: {signals[0]}")
        assert lines[-2].endswith(f"stop requested ({signals[0]}): last.pt holds iteration {held}")
    else:  # stopped at once, or the first signal's save came first; the log says which
        assert 2 <= held <= stopped
        assert lines[-1].endswith(
            f"KeyboardInterrupt: SIGINT ({log.parent / 'last.pt'} holds iteration {held})"
            if held != stopped
            else "KeyboardInterrupt: SIGINT"
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["grid", "--indices", "99"], "--indices/--count: need image indices in [0, 4), got [99]"),
        (["grid", "--count", "0"], "--indices/--count: need image indices in [0, 4), got []"),
        (["boundary-similarity", "--max-distance", "0"], "max_distance must be an int >= 1, got 0"),
    ],
)
def test_analysis_arguments_out_of_range(trained, tmp_path, capsys, argv, message):
    _, _, checkpoint = trained
    flag = "--checkpoints" if argv[0] == "grid" else "--checkpoint"
    out = tmp_path / ("g.png" if argv[0] == "grid" else "bs")
    fails(capsys, "analyze", argv[0], flag, checkpoint, "--out", out, *argv[1:], match=message)


@pytest.mark.parametrize("loss", ["ce", "contextrast"])
def test_a_training_step_waits_for_the_device_only_at_log_points(tmp_path, data, loss):
    """Between log points a step makes no host sync (``.item()``, ``bool()`` of a tensor
    and data-dependent shapes end in these operators): with the contrastive loss too, whose
    own label and finiteness checks the trainer switches off (it checks labels once and
    watches the loss on the device)."""
    syncs = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero")
    # One DataLoader worker: the augmentations' own int(tensor) draws run in it, not here.
    sections = {"optim": {"iters": 4}, "loss": {"name": loss}, "data": {"num_workers": 1}}
    sections["train"] = {"log_interval": 4, "eval_interval": 100, "checkpoint_interval": 100}
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def window(iteration):
        if iteration == 1:
            profiler.start()  # iterations 2 and 3: no log, evaluation or checkpoint
        if iteration == 3:
            profiler.stop()

    Trainer(config_from_dict(config(tmp_path, **sections)), on_iteration=window).fit()
    names = [event.name for event in profiler.events()]
    assert names.count("aten::convolution") > 10  # the window held training steps
    assert [n for n in names if n in syncs] == []
