"""The benchmark tools check their arguments before any work, each in one line."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks import load_tool


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "nope"], "--methods 'nope': choose from ['ce', 'contextrast'"),
        (["--size", "250", "512"], "--size 250 512: each side a multiple of 32"),
        (["--classes", "1"], "--classes 1: must be >= 2"),
        (["--rounds", "0"], "--rounds 0: must be >= 1"),
        (["--batch", "1"], "--batch 1: must be >= 2 (BatchNorm needs two images)"),
        (["--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
    ],
)
def test_training_cost_refuses_bad_arguments_at_once(monkeypatch, capsys, argv, message):
    cost = load_tool("training_cost")
    monkeypatch.setattr(sys, "argv", ["training_cost.py", *argv])
    monkeypatch.setattr(cost, "create_model", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        cost.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
