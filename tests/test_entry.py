"""The console script and the lazy package: a Ctrl-C while torch loads is one line."""

import subprocess
import sys

import pytest

import contextrast
from contextrast import entry


def test_import_contextrast_loads_no_torch():
    code = "import sys, contextrast; print('torch' in sys.modules, contextrast.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", contextrast.__version__]


def test_public_names_load_on_use():
    from contextrast.contrast import ContextrastLoss
    from contextrast.evaluation import metrics

    assert contextrast.ContextrastLoss is ContextrastLoss
    assert contextrast.metrics is metrics
    assert set(contextrast.__all__) == {*contextrast._EXPORTS, "__version__"}
    assert set(contextrast.__all__) <= set(dir(contextrast))
    with pytest.raises(AttributeError, match="no attribute 'ContextrastLos'"):
        _ = contextrast.ContextrastLos


def test_ctrl_c_while_importing_is_one_line(monkeypatch, capsys):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry.importlib, "import_module", interrupted)
    assert entry.main(["train", "x.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted while starting" in err


def test_entry_runs_the_cli_with_its_arguments(monkeypatch):
    from contextrast import cli

    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 7)
    assert entry.main(["eval", "a.yaml"]) == 7
    assert seen == [["eval", "a.yaml"]]
