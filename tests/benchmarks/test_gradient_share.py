"""benchmarks/gradient_share.py: the two gradients on the encoder, against cases whose answer is
known by construction."""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contextrast.config import config_from_dict, load_config
from contextrast.contrast import ContextrastLoss
from contextrast.engine import Trainer
from contextrast.engine.step import TrainingModule
from tests.benchmarks import load_tool
from tests.engine.runs import config, learnable_folder


class Out(NamedTuple):
    logits: torch.Tensor
    features: list[torch.Tensor]
    aux_logits: None = None


class Tiny(nn.Module):
    """Two feature maps from a two-convolution encoder, logits from a 1×1 head."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.encoder = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)])
        self.head = nn.Conv2d(6, classes, 1)

    def forward(self, images):
        low = torch.relu(self.encoder[0](images))
        high = torch.relu(self.encoder[1](low))
        return Out(self.head(high), [low, high])


class ScaledCE(nn.Module):
    """k times CE on the logits: its gradient is k times CE's, direction for direction."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, features, logits, target):
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear")
        return self.k * F.cross_entropy(logits, target, ignore_index=255)


class Blind(nn.Module):
    """A term with no path to the encoder (a parameter of its own only)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, features, logits, target):
        return self.w**2


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, :2] = 255
    return images, target


def rest_of(model):
    return TrainingModule(model, None, aux_weight=0.4)


def test_a_term_k_times_ce_has_ratio_k_and_cosine_one():
    tool = load_tool("gradient_share")
    torch.manual_seed(0)
    # step= goes only to a term that takes it (ScaledCE does not)
    row = tool.encoder_gradients(rest_of(Tiny()), ScaledCE(2.5), *batch(), step=7)
    assert row["term"] == pytest.approx(2.5 * row["ce"], rel=1e-6)
    assert row["ratio"] == pytest.approx(2.5, rel=1e-6)
    assert row["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_a_term_blind_to_the_encoder_or_switched_off_has_ratio_zero_and_no_cosine():
    tool = load_tool("gradient_share")
    torch.manual_seed(0)
    row = tool.encoder_gradients(rest_of(Tiny()), Blind(), *batch())
    assert row["grad_term"] == 0.0 and row["grad_ce"] > 0
    assert row["ratio"] == 0.0 and row["cosine"] is None
    # in its warm-up the run trained the term at weight 0
    row = tool.encoder_gradients(rest_of(Tiny()), ScaledCE(2.5), *batch(), scale=0.0)
    assert row["term"] == 0.0 and row["ratio"] == 0.0 and row["cosine"] is None


def test_a_batch_without_labels_gives_zeros_and_nones_not_nan():
    tool = load_tool("gradient_share")
    torch.manual_seed(0)
    images, target = batch()
    loss = ContextrastLoss(3, [4, 6], embed_dim=8, layer_weights=(0.5, 1.0))
    row = tool.encoder_gradients(rest_of(Tiny()), loss, images, torch.full_like(target, 255))
    assert row["ce"] == 0.0 and row["grad_ce"] == 0.0
    assert row["ratio"] is None and row["cosine"] is None


def test_the_two_gradients_of_the_real_loss_add_up_to_the_gradient_of_the_sum():
    tool = load_tool("gradient_share")
    torch.manual_seed(0)
    model = Tiny()
    loss = ContextrastLoss(3, [4, 6], embed_dim=8, layer_weights=(0.5, 1.0))
    images, target = batch(1)
    row = tool.encoder_gradients(rest_of(model), loss, images, target)
    # brute force: one backward of CE + term, and the two parts' norms from the identity
    # |a + b|² = |a|² + |b|² + 2 |a| |b| cos
    out = model(images)
    logits = F.interpolate(out.logits, size=(8, 8), mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, target, ignore_index=255) + loss(
        out.features, out.logits, target
    )
    grads = torch.autograd.grad(total, list(model.encoder.parameters()))
    summed = sum(float((g.double() ** 2).sum()) for g in grads)
    a, b, cos = row["grad_ce"], row["grad_term"], row["cosine"]
    assert summed == pytest.approx(a * a + b * b + 2 * a * b * cos, rel=1e-5)
    assert row["ratio"] == pytest.approx(b / a)


def test_bad_runs_are_refused_in_one_line_before_any_is_measured(tmp_path):
    tool = load_tool("gradient_share")
    with pytest.raises(SystemExit, match=r"last\.pt: no such file"):
        tool.main([str(tmp_path)])
    for option in ("--batches", "--threads"):
        with pytest.raises(SystemExit, match=f"^{option} 0: must be at least 1$"):
            tool.main([str(tmp_path), option, "0"])
    config = load_config("inia19/ce.yaml").to_dict()
    torch.save({"model": {}, "config": config, "contrast": None}, tmp_path / "last.pt")
    with pytest.raises(SystemExit, match=r"without a trained contrastive term \(loss\.name: ce\)"):
        tool.main([str(tmp_path)])
    torch.save({"model": {}, "config": config, "iteration": "abc"}, tmp_path / "last.pt")
    with pytest.raises(SystemExit, match=r"iteration 'abc' in last\.pt is not a step count"):
        tool.main([str(tmp_path)])


def test_a_trained_run_in_its_warm_up_measures_a_term_of_weight_zero(tmp_path, monkeypatch, capsys):
    learnable_folder(tmp_path / "data", count=4)
    monkeypatch.chdir(tmp_path)
    c = config_from_dict(config(tmp_path, optim={"iters": 2}, loss={"contrast_warmup_iters": 5}))
    Trainer(c).fit()
    folder = tmp_path / "runs" / "run"
    tool = load_tool("gradient_share")
    (tmp_path / "broken").mkdir()
    with pytest.raises(SystemExit, match="broken: checkpoint"):  # refused before measuring
        tool.main([str(folder), str(tmp_path / "broken"), "--out", str(tmp_path / "g.json")])
    assert "batch 0" not in capsys.readouterr().out
    tool.main([str(folder), "--batches", "3", "--out", str(tmp_path / "g.json")])
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [0] and {r["step"] for r in rows} == {2}
    assert all(r["term"] == 0.0 and r["grad_term"] == 0.0 and r["grad_ce"] > 0 for r in rows)
    assert "its training split holds 1 batch, all measured" in capsys.readouterr().out
