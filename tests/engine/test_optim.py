"""optim.name and the parameter groups (mmseg's paramwise_cfg), checked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contextrast.config import ConfigError, config_from_dict
from contextrast.engine.optim import build_optimizer, load_optimizer_state
from contextrast.engine.schedule import PolyLR
from contextrast.engine.trainer import Trainer
from contextrast.utils import checkpoint as ckpt
from tests.engine.runs import config, interrupt_at, learnable_folder


@pytest.fixture()
def workspace(tmp_path):
    learnable_folder(tmp_path / "data")
    return tmp_path


class Tiny(nn.Module):
    """A TrainingModule's naming: model.encoder / model.decode_head / contrast."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.model.decode_head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))
        self.contrast = nn.Module()
        self.contrast.heads = nn.Sequential(nn.Conv2d(4, 3, 1), nn.LayerNorm(3))


def groups_of(optimizer) -> dict[tuple[str, str], dict]:
    return {(g["role"], g["kind"]): g for g in optimizer.param_groups}


def tiny_config(**optim):
    return config_from_dict({"optim": {"lr": 0.1, "weight_decay": 0.01, **optim}})


def test_every_parameter_in_one_group_with_its_multipliers():
    net = Tiny()
    o = dict(norm_decay_mult=0.0, bias_decay_mult=0.5, head_lr_mult=10.0, contrast_lr_mult=2.0)
    optimizer = build_optimizer(tiny_config(**o), net)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # each exactly once
    g = groups_of(optimizer)
    m = net.model
    assert g["encoder", "weight"]["params"] == [m.encoder[0].weight]
    assert g["encoder", "bias"]["params"] == [m.encoder[0].bias]
    assert g["encoder", "norm"]["params"] == [m.encoder[1].weight, m.encoder[1].bias]
    assert g["head", "norm"]["params"] == [m.decode_head[1].weight, m.decode_head[1].bias]
    assert g["contrast", "norm"]["params"] == list(net.contrast.heads[1].parameters())
    expected = {  # (lr, weight decay)
        ("encoder", "weight"): (0.1, 0.01), ("encoder", "bias"): (0.1, 0.005),
        ("encoder", "norm"): (0.1, 0.0), ("head", "weight"): (1.0, 0.01),
        ("head", "bias"): (1.0, 0.005), ("head", "norm"): (1.0, 0.0),
        ("contrast", "weight"): (0.2, 0.01), ("contrast", "bias"): (0.2, 0.005),
        ("contrast", "norm"): (0.2, 0.0),
    }  # fmt: skip
    assert set(g) == set(expected)
    for key, (lr, decay) in expected.items():
        assert (g[key]["lr"], g[key]["weight_decay"]) == pytest.approx((lr, decay)), key


def test_default_sgd_groups_step_exactly_as_one_group():
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    b.load_state_dict(a.state_dict())
    grouped = build_optimizer(tiny_config(nesterov=True), a)
    plain = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    for step in range(3):
        for net, optimizer in ((a, grouped), (b, plain)):
            torch.manual_seed(step)
            for p in net.parameters():
                p.grad = torch.randn_like(p)
            optimizer.step()
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_adamw_decays_only_the_decayed_groups_by_hand():
    net = Tiny()
    optimizer = build_optimizer(tiny_config(name="adamw", lr=0.1, norm_decay_mult=0.0), net)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # Adam's step is 0/(0 + eps): only the decay moves them
    optimizer.step()
    norms = {id(p) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm |
             nn.GroupNorm | nn.LayerNorm) for p in m.parameters()}  # fmt: skip
    for p, old in zip(net.parameters(), before):
        factor = 1.0 if id(p) in norms else 1 - 0.1 * 0.01  # AdamW: p ← p − lr·wd·p
        assert torch.allclose(p, old * factor, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("name", "adam", r"optim\.name: 'adam' is not one of \['sgd', 'adamw'\]"),
        ("nesterov", True, None),
        ("betas", [0.9], r"optim\.betas: must be \[beta1, beta2\]"),
        ("betas", [0.9, 1.0], r"optim\.betas: must be \[beta1, beta2\], each in \[0, 1\)"),
        ("head_lr_mult", -1, r"optim\.head_lr_mult: must be finite and >= 0"),
        ("norm_decay_mult", ".nan", r"optim\.norm_decay_mult: must be finite and >= 0"),
        ("momentum", 1.0, r"optim\.momentum: must be in \[0, 1\)"),
    ],
)
def test_bad_optimiser_settings_are_one_line_errors(key, value, message):
    if key == "nesterov":  # Nesterov is SGD's: refused with AdamW
        with pytest.raises(ConfigError, match=r"optim\.nesterov: needs optim\.name=sgd"):
            config_from_dict({"optim": {"name": "adamw", "nesterov": True}})
        return
    value = float("nan") if value == ".nan" else value
    name = "adamw" if key == "betas" else "sgd"
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"optim": {"name": name, key: value}})


def test_a_setting_the_optimiser_never_reads_is_refused():
    with pytest.raises(ConfigError, match=r"optim\.momentum: is SGD's .*optim\.betas\[0\]"):
        config_from_dict({"optim": {"name": "adamw", "momentum": 0.5}})
    with pytest.raises(ConfigError, match=r"optim\.betas: are AdamW's .*optim\.momentum"):
        config_from_dict({"optim": {"name": "sgd", "betas": [0.8, 0.99]}})
    # the defaults, as every generated config restates them, pass with either optimiser
    for name in ("sgd", "adamw"):
        config_from_dict({"optim": {"name": name, "momentum": 0.9, "betas": [0.9, 0.999]}})


def test_poly_reset_keeps_each_groups_multiplier():
    net = Tiny()
    optimizer = build_optimizer(tiny_config(head_lr_mult=10.0), net)
    schedule = PolyLR(optimizer, total_iters=10, power=1.0)
    lrs = schedule.reset(0.2, 20, 1.0, 0, 0.1, iteration=10)
    g = groups_of(optimizer)
    assert g["head", "weight"]["lr"] == pytest.approx(10 * 0.2 * 0.5)
    assert g["encoder", "weight"]["lr"] == pytest.approx(0.2 * 0.5)
    assert sorted(lrs) == pytest.approx(sorted(group["lr"] for group in optimizer.param_groups))


def test_a_one_group_checkpoint_state_maps_onto_the_groups():
    torch.manual_seed(0)
    net = Tiny()
    # conv, BN, conv, BN: the groups (weights, then biases, then norms) reorder the
    # parameters, so a copy by index would hand conv 2 the momentum of BN 1.
    net.model.encoder = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    old = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)  # what earlier runs saved
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    grouped = build_optimizer(tiny_config(), net)
    load_optimizer_state(grouped, old.state_dict(), list(net.parameters()))
    grouped_order = [p for group in grouped.param_groups for p in group["params"]]
    assert [id(p) for p in grouped_order] != [id(p) for p in net.parameters()]
    for p in net.parameters():
        assert torch.equal(grouped.state[p]["momentum_buffer"], old.state[p]["momentum_buffer"])
    # A one-group model (a bias-free encoder only) takes the same path.
    lone = nn.Module()
    lone.model = nn.Module()
    lone.model.encoder = nn.Linear(2, 2, bias=False)
    old = torch.optim.SGD(lone.parameters(), lr=0.1, momentum=0.9)
    lone.model.encoder.weight.grad = torch.ones(2, 2)
    old.step()
    grouped = build_optimizer(tiny_config(), lone)
    load_optimizer_state(grouped, old.state_dict(), list(lone.parameters()))
    assert grouped.param_groups[0]["role"] == "encoder"
    assert torch.equal(
        grouped.state[lone.model.encoder.weight]["momentum_buffer"], torch.ones(2, 2)
    )


def test_adamw_run_resumes_to_the_uninterrupted_weights(workspace):
    adamw = {"name": "adamw", "lr": 0.001, "weight_decay": 0.01, "norm_decay_mult": 0.0}
    full = Trainer(config_from_dict(config(workspace, "full", optim=adamw))).fit()
    crashed = config_from_dict(config(workspace, "crashed", optim=adamw))
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed, on_iteration=interrupt_at(5)).fit()
    resumed = Trainer(crashed, resume=True).fit()
    a = ckpt.load_checkpoint(workspace / "runs" / "full" / "last.pt")
    b = ckpt.load_checkpoint(crashed.run_dir / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["miou"] == full["miou"]


def test_resume_applies_changed_multipliers_and_refuses_another_optimiser(workspace, capsys):
    base = config(workspace, loss={"name": "ce"}, optim={"iters": 4, "weight_decay": 0.01})
    Trainer(config_from_dict(base)).fit()
    changed = {**base, "optim": {**base["optim"], "iters": 8, "head_lr_mult": 10.0,
                                 "norm_decay_mult": 0.0}}  # fmt: skip
    trainer = Trainer(config_from_dict(changed), resume=True)
    out = capsys.readouterr().out
    assert "optim.norm_decay_mult 1.0 -> 0.0, optim.head_lr_mult 1.0 -> 10.0" in out
    g = groups_of(trainer.optimizer)
    assert g["head", "weight"]["lr"] == pytest.approx(10 * g["encoder", "weight"]["lr"])
    assert g["encoder", "norm"]["weight_decay"] == 0.0
    assert g["encoder", "weight"]["weight_decay"] == 0.01
    other = {**base, "optim": {**base["optim"], "iters": 8, "name": "adamw"}}
    with pytest.raises(ConfigError, match=r"optim\.name: 'adamw' differs from 'sgd' in the check"):
        Trainer(config_from_dict(other), resume=True)
