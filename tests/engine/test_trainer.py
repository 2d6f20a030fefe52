import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contextrast.config import ConfigError, config_from_dict
from contextrast.engine.builders import build_model
from contextrast.engine.trainer import IterationBatchSampler, PolyLR, Trainer, TrainingModule
from contextrast.models import create_model
from contextrast.utils import checkpoint as ckpt
from tests.engine.runs import config, interrupt_at, learnable_folder
from tests.engine.runs import config as run_config


@pytest.fixture()
def workspace(tmp_path):
    learnable_folder(tmp_path / "data")
    return tmp_path


def test_training_lowers_the_loss_and_writes_loadable_checkpoints(workspace, capsys):
    # Four images, so that every batch holds the whole set: from scratch, 16 steps reliably
    # lower the loss on it (checked over seeds and learning rates), while on eight images
    # the logged loss still hovers around chance.
    small = learnable_folder(workspace / "small", count=4)
    c = config_from_dict(
        config(workspace, optim={"iters": 16}, train={"log_interval": 4}, data={"root": str(small)})
    )
    metrics = Trainer(c).fit()
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("it ")]
    losses = [float(line.split("loss ")[1].split()[0]) for line in logged]
    assert len(losses) == 4 and losses[-1] < losses[0]
    run = c.run_dir
    assert {"last.pt", "best.pt", "config.yaml", "train.log", "metrics.jsonl"} <= {
        p.name for p in run.iterdir()
    }
    assert (
        json.loads((run / "metrics" / "iter_0000016.json").read_text())["miou"] == metrics["miou"]
    )
    state = ckpt.load_checkpoint(run / "last.pt")
    assert state["iteration"] == 16 and state["classes"] == ["dark", "red"]
    model = build_model(config_from_dict(state["config"]), 2, pretrained=False)
    model.load_state_dict(state["model"])
    assert set(state["contrast"]) and any(k.startswith("heads.") for k in state["contrast"])
    assert list((run / "tensorboard").iterdir())


@pytest.mark.parametrize("memory", [None, 3])
def test_resume_after_a_crash_gives_the_uninterrupted_weights(workspace, memory):
    def config(workspace, name):  # Contextrast, or Contextrast++'s anchor memory (K_M 3)
        c = run_config(workspace, name)
        c["loss"]["contrast"] = {**c["loss"].get("contrast", {}), "anchor_memory": memory}
        return c

    full = Trainer(config_from_dict(config(workspace, "full"))).fit()

    def crash(iteration):
        if iteration == 5:  # after the checkpoint at 4, before the one at 6
            raise KeyboardInterrupt

    crashed = config_from_dict(config(workspace, "crashed"))
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, on_iteration=crash).fit()
    assert ckpt.load_checkpoint(crashed.run_dir / "last.pt")["iteration"] == 4
    resumed = Trainer(crashed, resume=True).fit()
    a = ckpt.load_checkpoint(workspace / "runs" / "full" / "last.pt")
    b = ckpt.load_checkpoint(crashed.run_dir / "last.pt")
    for part in ("model", "contrast"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    if memory:  # the queues are training state: saved, restored, and filled by the steps
        assert int(a["contrast"]["memory.count"].min()) == memory
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    resumed_momentum = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum, resumed_momentum))
    assert resumed["miou"] == full["miou"]


def test_run_directory_is_never_overwritten_and_resume_needs_a_checkpoint(workspace):
    c = config_from_dict(config(workspace, optim={"iters": 2}))
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint .*last.pt"):
        Trainer(c, resume=True)
    (c.run_dir / "best.pt").mkdir(parents=True)  # a folder the first save would fail on
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"run\.name: .*best\.pt is not a file; move it"):
            Trainer(c, resume=resume)
    (c.run_dir / "best.pt").rmdir()
    Trainer(c).fit()
    with pytest.raises(ConfigError, match=r"already holds a checkpoint; pass --resume"):
        Trainer(c)
    changed = config_from_dict(config(workspace, optim={"iters": 2}, loss={"name": "ce"}))
    with pytest.raises(ConfigError, match=r"loss\.name: 'ce' differs from 'contextrast'"):
        Trainer(changed, resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    good = {"model": {"w": torch.ones(2)}, "config": {}}
    ckpt.save_checkpoint(good, path)

    def torn_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_errors_are_clear(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"bad.pt: not a readable contextrast checkpoint"):
        ckpt.load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"missing 'model' or 'config'"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_poly_schedule_with_warmup_by_hand():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    schedule = PolyLR(optimizer, total_iters=10, power=0.9, warmup_iters=2, warmup_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.01 * 0.1)
    assert lrs[1] == pytest.approx(0.01 * 0.9**0.9 * 0.55)
    assert lrs[5] == pytest.approx(0.01 * 0.5**0.9)
    assert lrs[9] == pytest.approx(0.01 * 0.1**0.9)


def test_iteration_sampler_resumes_and_splits_over_ranks():
    def batches(rank, world, start, total):
        return list(IterationBatchSampler(10, 2, rank, world, seed=1, start=start, total=total))

    whole = batches(0, 1, 0, 12)
    assert batches(0, 1, 7, 12) == whole[7:]
    # An epoch is 5 batches of 2: each covers all 10 samples once, epoch in the index.
    first = sorted(i for b in whole[:5] for i in b)
    assert first == list(range(10))
    assert sorted(i % 10 for b in whole[5:10] for i in b) == list(range(10))
    assert all(i >= 10 for b in whole[5:10] for i in b)
    r0, r1 = batches(0, 2, 0, 2), batches(1, 2, 0, 2)
    assert not set(r0[0]) & set(r1[0])
    with pytest.raises(ConfigError, match=r"fewer than the global batch of 12"):
        IterationBatchSampler(10, 6, 0, 2, 0, 0, 1)


def test_contrast_warmup_keeps_the_term_but_not_its_gradient():
    model = create_model("hrnetv2_w18_small", num_classes=3)
    from contextrast import ContextrastLoss

    net = TrainingModule(model, ContextrastLoss(3, model.feature_channels, embed_dim=8))
    images, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    terms = net(images, target, contrast_scale=0.0)
    terms.total.backward()
    assert terms.contrast > 0 and torch.allclose(terms.total.detach(), terms.ce)
    head = net.contrast.heads[0].net[0].weight
    assert head.grad is not None and head.grad.abs().sum() == 0


def test_hflip_on_digits_is_rejected(tmp_path):
    c = config_from_dict(
        config(
            tmp_path,
            data={"dataset": "digits", "root": None, "hflip": 0.5, "options": {"length": 8}},
        )
    )
    with pytest.raises(ConfigError, match=r"data\.hflip: must be 0 for digits"):
        Trainer(c)
    # a config without a data section meets the same check: the message says why digits
    bare = config_from_dict({"run": {"name": "x", "output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"data\.dataset defaults to digits: set it"):
        Trainer(bare)


def test_two_process_gloo_run(workspace):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    # Two images without a labelled pixel: a rank whose share is only those still takes its
    # step (zero CE) and joins the gradient all-reduce.
    blank = {1, 7}
    for k in blank:
        path = workspace / "data" / "labels" / "train" / f"{k}.png"
        Image.fromarray(np.full((32, 32), 255, dtype=np.uint8), mode="L").save(path)
    empty_shares = sum(
        set(i % 8 for i in share) <= blank
        for rank in (0, 1)
        for share in IterationBatchSampler(8, 2, rank, 2, 3, 0, 4)
    )
    assert empty_shares == 1
    (workspace / "cfg.yaml").write_text(json.dumps(config(workspace, "ddp", optim={"iters": 4})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "contextrast.cli", "train",
         str(workspace / "cfg.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    state = ckpt.load_checkpoint(workspace / "runs" / "ddp" / "last.pt")
    assert state["iteration"] == 4 and state["config"]["data"]["batch_size"] == 4
    log = (workspace / "runs" / "ddp" / "train.log").read_text()
    contrast_terms = [
        float(x.split("contrast ")[1].split(")")[0]) for x in log.splitlines() if "it " in x
    ]
    assert contrast_terms and all(t > 0 for t in contrast_terms)  # active on many processes too
    assert log.count("1 batch(es) without labelled pixels (CE 0)") == empty_shares


SLURM_TASK = """
import os, sys, torch
from contextrast.config import load_config
from contextrast.engine import Trainer
from contextrast.utils.distributed import cleanup, slurm_environment

os.environ.update(slurm_environment(os.environ))  # what `contextrast train --launcher slurm` does
trainer = Trainer(load_config(sys.argv[1]))
trainer.fit()
# The parameters (BatchNorm running statistics are per process on CPU: no SyncBatchNorm).
state = {k: v.detach().cpu() for k, v in trainer.model.named_parameters()}
torch.save(state, os.path.join(sys.argv[2], "rank" + os.environ["RANK"] + ".pt"))
cleanup()
"""


def test_two_slurm_tasks_without_torchrun_end_with_identical_weights(workspace):
    import socket

    with socket.socket() as probe:  # a free rendezvous port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (workspace / "cfg.yaml").write_text(json.dumps(config(workspace, "slurm", optim={"iters": 2})))
    torchrun_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    base = {k: v for k, v in os.environ.items() if k not in torchrun_vars}
    tasks = [
        subprocess.Popen(
            [sys.executable, "-c", SLURM_TASK, str(workspace / "cfg.yaml"), str(workspace)],
            env={
                **base,
                "OMP_NUM_THREADS": "1",
                "SLURM_PROCID": str(rank),
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": str(rank),
                "SLURM_JOB_NODELIST": "localhost",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=300) for task in tasks]
    for task, (_, err) in zip(tasks, outputs):
        assert task.returncode == 0, err[-2000:]
    assert "2 process(es)" in outputs[0][0]
    first, second = (torch.load(workspace / f"rank{r}.pt") for r in (0, 1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    state = ckpt.load_checkpoint(workspace / "runs" / "slurm" / "last.pt")
    assert state["iteration"] == 2
    # The ranks seed differently (run.seed + rank) and train on different images: equal
    # weights mean DDP broadcast the initial ones and averaged every gradient.


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains(workspace, amp):
    c = config_from_dict(config(workspace, f"amp_{amp}", optim={"iters": 2, "amp": amp}))
    trainer = Trainer(c)
    metrics = trainer.fit()
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    state = ckpt.load_checkpoint(c.run_dir / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert metrics["miou"] == metrics["miou"]  # not NaN


@pytest.mark.parametrize(("before", "after"), [("none", "fp16"), ("fp16", "none")])
def test_resume_switching_mixed_precision_continues(workspace, before, after):
    c = config(workspace, loss={"name": "ce"}, optim={"iters": 4, "amp": before})
    c["train"] = {**c.get("train", {}), "checkpoint_interval": 2}
    with pytest.raises(KeyboardInterrupt):
        Trainer(config_from_dict(c), on_iteration=interrupt_at(2)).fit()
    switched = {**c, "optim": {**c["optim"], "amp": after}}
    trainer = Trainer(config_from_dict(switched), resume=True)
    # a scaler the saved run never had starts at its default scale, as a new fp16 run would
    assert trainer.scaler.is_enabled() == (after == "fp16")
    if after == "fp16":
        assert trainer.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()
    trainer.fit()
    assert ckpt.load_checkpoint(workspace / "runs" / "run" / "last.pt")["iteration"] == 4


def test_a_bad_augmentation_names_its_data_key(workspace):
    for key, value, message in [
        ("crop_size", [0, 0], r"data\.crop_size must be \(height, width\) > 0"),
        ("scale_range", [2.0, 1.0], r"data\.scale_range must be \(low, high\)"),
        ("color_jitter", [-1, 0, 0, 0], r"data\.color_jitter must be"),
        ("color_jitter", [float("nan"), 0, 0, 0], r"data\.color_jitter must be .* finite"),
        ("color_jitter", [0, 0, 0, 0.9], r"data\.color_jitter must be .* hue <= 0\.5"),
    ]:
        c = config(workspace)
        c["data"] = {**c["data"], key: value}
        with pytest.raises(ConfigError, match=message):
            Trainer(config_from_dict(c))


def test_a_bad_loss_option_stops_the_run_before_the_label_scan(workspace, monkeypatch):
    def scan(self):
        raise AssertionError("the labels were scanned before the loss was checked")

    monkeypatch.setattr(Trainer, "_check_labels", scan)
    loss = {"name": "contextrast", "contrast": {"bane_start_step": 4, "stop_step": 3}}
    with pytest.raises(ConfigError, match=r"loss.contrast: bane_start_step=4 >= stop_step=3"):
        Trainer(config_from_dict(config(workspace, loss=loss)))


def test_crop_size_must_fit_the_encoder_stride(workspace):
    c = config_from_dict(config(workspace, data={"crop_size": [36, 32]}))
    with pytest.raises(ConfigError, match=r"data\.crop_size: \[36, 32\] must be multiples of 32"):
        Trainer(c)


@pytest.mark.parametrize(
    ("loss", "section"),
    [
        ("pixel_contrast", {"pixel_contrast": {"embed_dim": 8, "max_views": 8, "memory": True}}),
        ("ms_cs", {"ms_cs": {"embed_dim": 8}}),
        ("region_contrast", {"region_contrast": {"embed_dim": 8}}),
        ("contextrast", {"contrast": {"embed_dim": 8, "negatives": "semi_hard"}}),
    ],
)
def test_one_config_key_switches_the_loss(workspace, loss, section):
    c = config_from_dict(
        config(workspace, loss, optim={"iters": 2}, loss={"name": loss, **section})
    )
    trainer = Trainer(c)
    trainer.fit()
    state = ckpt.load_checkpoint(c.run_dir / "last.pt")
    assert state["contrast"] and type(trainer.contrast).__name__ in {
        "PixelContrastMemory", "MultiScaleCrossScaleLoss", "RegionContrastLoss", "ContextrastLoss",
    }  # fmt: skip
    log = (c.run_dir / "train.log").read_text()
    assert "contrast 0.0000)" not in log.splitlines()[-2]  # the term was active


def _compiled_and_eager(workspace, backend):
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", backend)):
        c = config_from_dict(
            config(
                workspace,
                name,
                model={"name": "tu-resnet10t"},
                optim={"iters": 3, "compile": compile_},
            )
        )
        trainer = Trainer(c)
        trainer.fit()
        assert (trainer.model._compiled_call_impl is not None) == bool(compile_)
        log = (c.run_dir / "train.log").read_text().splitlines()
        losses = [float(line.split("| loss ")[1].split()[0]) for line in log if "| loss " in line]
        runs[name] = (losses, ckpt.load_checkpoint(c.run_dir / "last.pt"))
    (eager, a), (compiled, b) = runs["eager"], runs["compiled"]
    assert len(eager) == 3 and eager == pytest.approx(compiled, rel=1e-4)
    assert a["model"].keys() == b["model"].keys()  # compiled in place: same checkpoint keys
    for key, value in a["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["model"][key], rtol=1e-3, atol=1e-5), key


def test_a_compiled_model_trains_as_the_eager_one(workspace):
    # aot_eager traces and differentiates the graph as inductor does, without generating C++
    # (minutes on a 2-core CPU); inductor itself: the slow test below.
    _compiled_and_eager(workspace, "aot_eager")


@pytest.mark.slow
def test_an_inductor_compiled_model_trains_as_the_eager_one(workspace):
    _compiled_and_eager(workspace, True)


def test_an_unknown_compile_backend_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optim\.compile: unknown backend 'fast'"):
        config_from_dict({"optim": {"compile": "fast"}})


def _float_tensors(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}


def test_weight_average_is_timms_ema_and_is_what_the_run_reports_and_deploys(workspace):
    trained = []
    c = config_from_dict(
        config(
            workspace,
            loss={"name": "ce"},
            optim={"iters": 4},
            train={"ema_decay": 0.5, "eval_interval": 2, "checkpoint_interval": 2},
        )
    )
    trainer = Trainer(c, on_iteration=lambda _: trained.append(_float_tensors(model.state_dict())))
    model = trainer.model
    metrics = trainer.fit()
    # ModelEmaV3 with warm-up: step t (1-based) uses decay min(1 - t^(-2/3), cap) from t = 2,
    # and the first step copies the weights.
    expected = trained[0]
    for t, weights in enumerate(trained[1:], start=2):
        decay = min(1 - t ** (-2 / 3), 0.5)
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    state = ckpt.load_checkpoint(c.run_dir / "last.pt")
    for key, value in expected.items():
        torch.testing.assert_close(state["ema"][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(state["ema"][key], state["model"][key])  # it is not the last step
    # Reported: the average's metrics, with the trained weights' own beside them.
    assert set(metrics["raw"]) == {"miou", "pixel_accuracy", "boundary_miou", "size_miou"}
    lines = (c.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4]
    # Deployed: eval, predict and export load the average.
    from contextrast.engine import load_run

    run = load_run(c.run_dir / "last.pt")
    for key, value in run.model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, state["ema"][key]), key


def test_resume_continues_the_weight_average(workspace):
    ema = {"ema_decay": 0.9, "eval_interval": 100, "checkpoint_interval": 2}
    Trainer(config_from_dict(config(workspace, "full", loss={"name": "ce"}, train=ema))).fit()

    def crash(iteration):
        if iteration == 3:
            raise KeyboardInterrupt

    crashed = config_from_dict(config(workspace, "crashed", loss={"name": "ce"}, train=ema))
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, on_iteration=crash).fit()
    Trainer(crashed, resume=True).fit()
    a = ckpt.load_checkpoint(workspace / "runs" / "full" / "last.pt")["ema"]
    b = ckpt.load_checkpoint(crashed.run_dir / "last.pt")["ema"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ema_decay_outside_zero_one_is_a_config_error():
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"train.ema_decay: must be in \(0, 1\) or null"):
            config_from_dict({"train": {"ema_decay": bad}})


def test_a_region_term_trains_beside_any_loss_and_is_logged(workspace, capsys):
    c = config_from_dict(
        config(workspace, loss={"name": "ce", "region": {"name": "dice"}}, optim={"iters": 2})
    )
    Trainer(c).fit()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("it ")]
    region = [float(x.split("region ")[1].split(")")[0]) for x in lines]
    assert len(region) == 2 and all(0 < r < 1 for r in region)  # a Dice loss lies in (0, 1)


def test_resume_never_drops_or_mixes_a_weight_average(workspace, capsys):
    ema = {"ema_decay": 0.9, "eval_interval": 2, "checkpoint_interval": 2}
    with_ema = config(workspace, "with", loss={"name": "ce"}, optim={"iters": 2}, train=ema)
    Trainer(config_from_dict(with_ema)).fit()
    dropped = {**with_ema, "optim": {**with_ema["optim"], "iters": 4}}
    dropped["train"] = {**ema, "ema_decay": None}
    with pytest.raises(ConfigError, match=r"train.ema_decay: the checkpoint .* keeps a moving "
                       r"average of the weights \(decay 0.9\)"):  # fmt: skip
        Trainer(config_from_dict(dropped), resume=True)
    # A run without an average that is resumed with one: best.pt is chosen among averages.
    plain = config(workspace, "plain", loss={"name": "ce"}, optim={"iters": 2},
                   train={**ema, "ema_decay": None})  # fmt: skip
    Trainer(config_from_dict(plain)).fit()
    later = {**plain, "optim": {**plain["optim"], "iters": 4}, "train": ema}
    trainer = Trainer(config_from_dict(later), resume=True)
    assert trainer.best_miou == -float("inf")
    assert "best.pt is chosen among the averages from now on" in capsys.readouterr().out
    trainer.fit()
    best = ckpt.load_checkpoint(workspace / "runs" / "plain" / "best.pt")
    assert "ema" in best and best["iteration"] in (2, 4)


def _trained(state: dict) -> dict:
    """The weights SGD moves (BatchNorm running statistics move without any lr)."""
    return {
        k: v for k, v in state["model"].items() if "running_" not in k and v.is_floating_point()
    }


def test_resume_with_a_longer_schedule_extends_the_poly_decay(workspace, capsys):
    short = config(workspace, loss={"name": "ce"}, optim={"iters": 4, "lr": 0.05})
    Trainer(config_from_dict(short)).fit()
    finished = ckpt.load_checkpoint(workspace / "runs" / "run" / "last.pt")
    assert finished["optimizer"]["param_groups"][0]["lr"] == 0.0
    longer = {**short, "optim": {**short["optim"], "iters": 8, "lr": 0.1}}
    trainer = Trainer(config_from_dict(longer), resume=True)
    # The new base lr on the new length's poly curve at iteration 4: 0.1 · (1 − 4/8)^0.9.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**0.9)
    assert "optim.lr 0.05 -> 0.1, optim.iters 4 -> 8" in capsys.readouterr().out
    trainer.fit()
    resumed = ckpt.load_checkpoint(workspace / "runs" / "run" / "last.pt")
    assert resumed["iteration"] == 8
    assert resumed["optimizer"]["param_groups"][0]["lr"] == 0.0  # the decay ends at the end
    before, after = _trained(finished), _trained(resumed)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2  # iterations 5–8 trained the weights
    written = (workspace / "runs" / "run" / "config.yaml").read_text()
    assert "iters: 8" in written and "lr: 0.1" in written


def test_resume_with_a_shorter_schedule_still_ends_at_lr_zero(workspace):
    long = config(
        workspace, loss={"name": "ce"}, optim={"iters": 8}, train={"checkpoint_interval": 2}
    )
    with pytest.raises(KeyboardInterrupt):
        Trainer(config_from_dict(long), on_iteration=interrupt_at(3)).fit()
    shorter = {**long, "optim": {**long["optim"], "iters": 6}}
    trainer = Trainer(config_from_dict(shorter), resume=True)
    start = trainer.start_iter
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 - start / 6) ** 0.9)
    trainer.fit()
    state = ckpt.load_checkpoint(workspace / "runs" / "run" / "last.pt")
    assert state["iteration"] == 6 and state["optimizer"]["param_groups"][0]["lr"] == 0.0


def test_a_resume_with_nothing_to_train_keeps_the_runs_config(workspace):
    c = config(workspace, loss={"name": "ce"}, optim={"iters": 4})
    Trainer(config_from_dict(c)).fit()
    written = (workspace / "runs" / "run" / "config.yaml").read_text()
    shorter = {**c, "optim": {**c["optim"], "iters": 3}}
    Trainer(config_from_dict(shorter), resume=True).fit()  # "already finished": nothing runs
    assert (workspace / "runs" / "run" / "config.yaml").read_text() == written


def test_the_contrastive_losss_own_per_step_checks_are_off_in_training(workspace, monkeypatch):
    # A loss with a ``validate`` switch would wait for the device every step to check the
    # labels and its value; the trainer checks both itself (data.check_labels, NonFiniteWatch).
    from contextrast.engine import trainer as module

    def built(*args, **kwargs):
        loss = build_contrast(*args, **kwargs)
        loss.validate = True
        return loss

    build_contrast = module.build_contrast
    monkeypatch.setattr(module, "build_contrast", built)
    trainer = Trainer(config_from_dict(config(workspace, optim={"iters": 1})))
    assert trainer.contrast.validate is False


def test_last_metrics_is_the_last_evaluation_and_finished_metrics_needs_the_end(workspace):
    from contextrast.engine import finished_metrics, last_metrics

    c = config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 2}))
    assert last_metrics(c.run_dir) == {} and finished_metrics(c) is None
    metrics = Trainer(c).fit()
    assert last_metrics(c.run_dir)["iteration"] == 2 == metrics["iteration"]
    assert finished_metrics(c) == last_metrics(c.run_dir)
    # The folder holds a 2-iteration run: never read, or extended, as a 3-iteration one.
    longer = config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 3}))
    with pytest.raises(ConfigError, match=r"other settings \(optim\.iters differs from"):
        finished_metrics(longer)
    # A trailing blank line is skipped; a line cut off (a full disk, an editor) is named.
    path = c.run_dir / "metrics.jsonl"
    path.write_text(path.read_text() + "\n\n")
    assert last_metrics(c.run_dir)["iteration"] == 2
    lines = len(path.read_text().splitlines())
    path.write_text(path.read_text() + '{"iteration": 3, "mi')
    with pytest.raises(ValueError, match=rf"metrics\.jsonl, line {lines + 1}: not a JSON record"):
        last_metrics(c.run_dir)


def test_run_deterministic_holds_for_the_run_only(workspace):
    # The process's own algorithm setting is back after fit: a deterministic run inside a
    # notebook or a test suite does not leave every later operation filling its tensors.
    seen = []
    c = config_from_dict(config(workspace, optim={"iters": 2}, train={"checkpoint_interval": 100}))
    assert c.run.deterministic and not torch.are_deterministic_algorithms_enabled()
    Trainer(
        c, on_iteration=lambda i: seen.append(torch.are_deterministic_algorithms_enabled())
    ).fit()
    assert seen == [True, True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_trainer_gives_a_scheduled_loss_its_step(workspace, capsys):
    # start_step=2: iterations 1 and 2 (steps 0 and 1) train without the term, 3 with it.
    contrast = {"embed_dim": 16, "max_pixels": 200, "start_step": 2}
    c = config_from_dict(config(workspace, optim={"iters": 3}, loss={"contrast": contrast}))
    Trainer(c).fit()
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("it ")]
    terms = [float(line.split("contrast ")[1].split(")")[0]) for line in logged]
    assert terms[:2] == [0.0, 0.0] and terms[2] > 0


def test_resume_names_every_change_and_refuses_those_that_change_the_training(workspace, capsys):
    base = config(workspace, optim={"iters": 4}, train={"checkpoint_interval": 2})
    Trainer(config_from_dict(base)).fit()
    written = (workspace / "runs" / "run" / "config.yaml").read_text()
    longer = {**base, "optim": {**base["optim"], "iters": 6}}
    for section, key, value in [
        ("loss", "contrast", {**base["loss"]["contrast"], "temperature": 0.2}),
        ("data", "batch_size", 2),
        ("data", "crop_size", [64, 32]),
        ("run", "seed", 4),
    ]:
        changed = {**longer, section: {**longer[section], key: value}}
        refused = r"--resume: .* differs from the checkpoint .*last\.pt; it changes what is trained"
        with pytest.raises(ConfigError, match=refused):
            Trainer(config_from_dict(changed), resume=True)
    assert (workspace / "runs" / "run" / "config.yaml").read_text() == written  # untouched
    # Asked for, the change is made, named, and the config that ran before is kept.
    contrast = {**base["loss"]["contrast"], "temperature": 0.2}
    hotter = {
        **longer,
        "loss": {**base["loss"], "contrast": contrast},
        "eval": {**base["eval"], "flip": True},
    }
    capsys.readouterr()
    Trainer(config_from_dict(hotter), resume=True, accept_changes=True).fit()
    out = capsys.readouterr().out
    assert (
        "resumed with changed settings: loss.contrast.temperature 0.1 -> 0.2, eval.flip False "
        "-> True (accepted: --accept-changes)" in out
    )
    assert "optim.iters 4 -> 6" in out
    kept = workspace / "runs" / "run" / "config_until_4.yaml"
    assert kept.read_text() == written
    assert "temperature: 0.2" in (workspace / "runs" / "run" / "config.yaml").read_text()


def test_resume_applies_evaluation_changes_without_asking(workspace, capsys):
    base = config(workspace, loss={"name": "ce"}, optim={"iters": 2})
    Trainer(config_from_dict(base)).fit()
    later = {**base, "optim": {**base["optim"], "iters": 3}, "eval": {"boundary_widths": [3]}}
    Trainer(config_from_dict(later), resume=True).fit()
    assert "resumed with changed settings: eval.boundary_widths [2] -> [3]\n" in (
        capsys.readouterr().out.replace("\r", "") + "\n"
    )


def test_an_interrupted_run_resumed_below_its_iteration_is_refused(workspace):
    long = config(
        workspace, loss={"name": "ce"}, optim={"iters": 8}, train={"checkpoint_interval": 2}
    )
    with pytest.raises(KeyboardInterrupt):
        Trainer(config_from_dict(long), on_iteration=interrupt_at(5)).fit()
    shorter = {**long, "optim": {**long["optim"], "iters": 3}}
    refused = r"optim\.iters: 3 is below iteration 4, which the interrupted run in .* reached"
    with pytest.raises(ConfigError, match=refused + r" \(of 8\); resume with optim\.iters >= 4"):
        Trainer(config_from_dict(shorter), resume=True)
    # Cut to the iteration it reached, it ends there with the evaluation it never had.
    assert not (workspace / "runs" / "run" / "best.pt").exists()
    exact = {**long, "optim": {**long["optim"], "iters": 4}}
    metrics = Trainer(config_from_dict(exact), resume=True).fit()
    run = workspace / "runs" / "run"
    assert metrics["iteration"] == 4 and (run / "best.pt").is_file()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 4
    assert "iters: 4" in (run / "config.yaml").read_text()
    assert "iters: 8" in (run / "config_until_4.yaml").read_text()


@pytest.mark.parametrize("weight", [-1, ".nan"])
def test_a_bad_contrastive_weight_stops_the_run_before_it_starts(workspace, weight):
    from contextrast.config import apply_overrides

    data = apply_overrides(config(workspace), [f"loss.contrast.loss_weight={weight}"])
    with pytest.raises(ConfigError, match=r"loss\.contrast: loss_weight must be a finite number"):
        Trainer(config_from_dict(data))


def test_resume_on_other_classes_of_the_same_count_is_refused(workspace):
    Trainer(config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 2}))).fit()
    other = learnable_folder(workspace / "other")
    (other / "classes.txt").write_text("light\nblue\n")
    moved = config(workspace, loss={"name": "ce"}, optim={"iters": 3})
    moved["data"]["root"] = str(other)
    with pytest.raises(ConfigError, match=r"data: the classes \['light', 'blue'\] differ from"):
        Trainer(config_from_dict(moved), resume=True)
    Trainer(config_from_dict(moved), resume=True, accept_changes=True)  # when meant


def test_scores_carry_the_head_middle_and_tail_thirds_of_the_training_pixels(workspace):
    from contextrast.engine import last_metrics

    # a third class no pixel has: three thirds of one class each, the tail an empty one
    (workspace / "data" / "classes.txt").write_text("dark\nred\nunused\n")
    c = config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 2}))
    trainer = Trainer(c)
    train = trainer.train_set
    want = np.zeros(train.num_classes, dtype=np.int64)
    for i in range(len(train)):
        ids = train.read_label_ids(i)
        want += np.bincount(ids[ids != train.ignore_index], minlength=train.num_classes)
    assert trainer.class_pixels == want.tolist()
    metrics = trainer.fit()
    thirds = last_metrics(c.run_dir)["frequency_miou"]
    assert list(thirds) == ["head", "middle", "tail"]
    # NaN (the tail's class is in neither ground truth nor prediction) is written as null
    assert thirds == {k: None if math.isnan(v) else v for k, v in metrics["frequency_miou"].items()}


def test_resume_keeps_the_class_counts_and_an_accepted_memory_change_starts_it_empty(
    workspace, capsys
):
    c = config(workspace, optim={"iters": 4}, train={"checkpoint_interval": 2})
    with pytest.raises(KeyboardInterrupt):
        Trainer(config_from_dict(c), on_iteration=interrupt_at(3)).fit()
    counts = ckpt.load_checkpoint(workspace / "runs" / "run" / "last.pt")["class_pixels"]
    # Without the label scan the thirds come from the checkpoint.
    unscanned = {**c, "data": {**c["data"], "check_labels": False}}
    assert Trainer(config_from_dict(unscanned), resume=True).class_pixels == counts
    # Contextrast++'s memory switched on at resume: refused, or, accepted, starts empty.
    memory = {**c["loss"]["contrast"], "anchor_memory": 2}
    switched = {**c, "loss": {**c["loss"], "contrast": memory}}
    with pytest.raises(ConfigError, match=r"loss\.contrast\.anchor_memory"):
        Trainer(config_from_dict(switched), resume=True)
    capsys.readouterr()
    trainer = Trainer(config_from_dict(switched), resume=True, accept_changes=True)
    assert "anchor memory (loss.contrast.anchor_memory) starts empty at iteration 2" in (
        capsys.readouterr().out
    )
    assert int(trainer.contrast.memory.count.sum()) == 0
    trainer.fit()
    assert int(trainer.contrast.memory.count.max()) == 2


def test_adaptive_fusion_trains_in_the_contrast_group_and_a_resume_may_not_switch_it(workspace):
    c = config(workspace, optim={"iters": 2}, train={"checkpoint_interval": 2})
    c["loss"]["contrast"] = {**c["loss"].get("contrast", {}), "anchor_fusion": "adaptive"}
    trainer = Trainer(config_from_dict(c))
    fusion = {id(p) for p in trainer.contrast.fusion.parameters()}
    groups = {(g["role"], g["kind"]): {id(p) for p in g["params"]} for g in
              trainer.optimizer.param_groups}  # fmt: skip
    assert fusion <= groups[("contrast", "weight")] | groups[("contrast", "bias")]
    before = {k: v.clone() for k, v in trainer.contrast.fusion.state_dict().items()}
    trainer.fit()
    saved = ckpt.load_checkpoint(workspace / "runs" / "run" / "last.pt")["contrast"]
    assert not torch.equal(saved["fusion.query"], before["query"])  # trained and saved
    fixed = {**c, "loss": {**c["loss"], "contrast": {**c["loss"]["contrast"],
                                                     "anchor_fusion": "fixed"}}}  # fmt: skip
    for accept in (False, True):
        with pytest.raises(ConfigError, match=r"loss\.contrast\.anchor_fusion: 'fixed' differs "):
            Trainer(config_from_dict(fixed), resume=True, accept_changes=accept)


def test_a_loss_section_the_chosen_loss_never_reads_is_named_in_the_log(workspace):
    c = config(workspace, optim={"iters": 1}, loss={"name": "ce"})
    c["loss"]["contrast"] = {"bane_ratio": 0.3}
    Trainer(config_from_dict(c)).fit()
    log = (workspace / "runs" / "run" / "train.log").read_text()
    assert "unused with loss.name 'ce': loss.contrast.bane_ratio=0.3" in log
    assert "ms_cs" not in log.split("unused with")[1].splitlines()[0]  # defaults are quiet


def test_a_checkpoint_from_before_pair_form_resumes_as_it_trained(workspace):
    """A checkpoint written before ``loss.contrast.pair_form`` existed scored its pairs
    densely, the default: it resumes unchanged; a switch to another form is named."""
    short = config(workspace, optim={"iters": 2})
    Trainer(config_from_dict(short)).fit()
    path = workspace / "runs" / "run" / "last.pt"
    state = ckpt.load_checkpoint(path)
    del state["config"]["loss"]["contrast"]["pair_form"]  # as an older version wrote it
    ckpt.save_checkpoint(state, path)
    longer = {**short, "optim": {**short["optim"], "iters": 4}}
    sparse = {**longer, "loss": {**longer["loss"], "contrast": {
        **longer["loss"]["contrast"], "pair_form": "sparse"}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"loss\.contrast\.pair_form 'dense' -> 'sparse'"):
        Trainer(config_from_dict(sparse), resume=True)
    Trainer(config_from_dict(longer), resume=True).fit()
    assert ckpt.load_checkpoint(path)["iteration"] == 4
