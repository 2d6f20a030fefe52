"""Bad input to the benchmark tools is one line naming the file, argument or value, given
before any work: never a traceback after it, never NaN in what they print or write."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest
import yaml

from contextrast.config import config_from_dict
from tests.benchmarks import load_tool
from tests.benchmarks.test_run_keys import result, write_config
from tests.engine.runs import config, learnable_folder


def no_work(*_args, **_kwargs):
    pytest.fail("work started before the arguments were checked")


@pytest.fixture()
def tiny(tmp_path, monkeypatch) -> Path:
    """A config of the tiny folder data set, in a working folder of its own."""
    learnable_folder(tmp_path / "data", count=2)
    monkeypatch.chdir(tmp_path)
    return write_config(tmp_path / "cfg" / "tiny.yaml", tmp_path)


# --- results_io: the checks the tools share ---------------------------------------------


def test_check_out_refuses_what_cannot_be_written(tmp_path):
    results_io = load_tool("results_io")
    (tmp_path / "file.yaml").write_text("")
    with pytest.raises(SystemExit, match=r"a folder; name the file to write$"):
        results_io.check_out(tmp_path)
    with pytest.raises(SystemExit, match=r"file\.yaml is a file, not a folder$"):
        results_io.check_out(tmp_path / "file.yaml" / "sub" / "x.json")
    with pytest.raises(SystemExit, match=r"^--png .*x\.txt: must end in \.png$"):
        results_io.check_out(tmp_path / "x.txt", "--png", suffix=".png")
    assert results_io.check_out(tmp_path / "new" / "x.json") == tmp_path / "new" / "x.json"


def test_read_metrics_skips_blank_lines_and_names_a_broken_one(tmp_path):
    results_io = load_tool("results_io")
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n\n{"iteration": 2}\n\n')
    assert [e["iteration"] for e in results_io.read_metrics(path)] == [1, 2]
    path.write_text('{"iteration": 1}\n{"iteration": 2, "mi')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2: not a JSON object"):
        results_io.read_metrics(path)


# --- --out, --png: checked before the work ----------------------------------------------


def test_every_tool_checks_out_before_its_work(tmp_path, monkeypatch):
    (tmp_path / "file.yaml").write_text("")
    in_file = str(tmp_path / "file.yaml" / "x.json")
    good = result(tmp_path / "good.json", {"ce": {0: 0.4, 1: 0.5}, "x": {0: 0.5, 1: 0.5}})
    folder = f"--out {tmp_path}: a folder; name the file to write"

    accuracy = load_tool("accuracy")
    monkeypatch.setattr(accuracy, "load_config", no_work)
    for out, message in [(str(tmp_path), folder), (in_file, "file.yaml is a file, not a folder")]:
        with pytest.raises(SystemExit, match=message):
            accuracy.main(["--report-only", "--out", out, "--methods", "ce"])

    fit = load_tool("fit_curve")
    monkeypatch.setattr(fit, "schedule_rows", no_work)
    for extra, message in [
        (["--out", str(tmp_path)], folder),
        (["--png", "x.txt"], "--png x.txt: must end in .png"),
        (["--png", str(tmp_path / "file.yaml" / "x.png")], "file.yaml is a file, not a folder"),
        (["--out", str(good)], f"--out {good}: a result file it reads; name another file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            fit.main(["--schedule", "s", str(good), *extra])
        assert str(exit_info.value) == message or message in str(exit_info.value)

    table = load_tool("runs_table")
    monkeypatch.setattr(table, "read_metrics", no_work)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(config(tmp_path)))
    with pytest.raises(SystemExit, match=folder):
        table.main([str(tmp_path), "--out", str(tmp_path)])

    cost = load_tool("training_cost")
    monkeypatch.setattr(cost, "create_model", no_work)
    monkeypatch.setattr(sys, "argv", ["training_cost.py", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=folder):
        cost.main()

    share = load_tool("gradient_share")
    monkeypatch.setattr(share, "load_run", no_work)
    for out, message in [(str(tmp_path), folder), (in_file, "file.yaml is a file, not a folder")]:
        with pytest.raises(SystemExit, match=message):
            share.main([str(tmp_path), "--out", out])

    dropin = load_tool("dropin")
    monkeypatch.setattr(dropin, "train_one", no_work)
    learnable_folder(tmp_path / "data", count=2)
    for out, message in [(str(tmp_path), folder), (in_file, "file.yaml is a file, not a folder")]:
        with pytest.raises(SystemExit, match=message):
            dropin.main(["--root", str(tmp_path / "data"), "--out", out])


# --- accuracy.py ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k-sweep", "2"], r"^--k-sweep 2: must be a number in \[0, 1\]"),
        (["--k-sweep", "nan"], r"^--k-sweep nan: must be a number in \[0, 1\]"),
        (["--k-sweep", "0.5", "0.5"], r"^--k-sweep \[0\.5, 0\.5\]: a value given twice"),
        # a value only the loss's constructor checks, in a variant of the second method
        (["--methods", "ce", "--variant", "far:loss.contrast.bane_ratio=2"],
         r"^far: loss\.contrast: bane_ratio must be a number in \[0, 1\], got 2\.0$"),
        (["--methods", "ce", "--variant", "w:loss.contrast.w_high=7"],
         r"^w: loss\.contrast: w_high must be a number in \[0, 1\], got 7\.0$"),
        (["--methods", "ce", "contextrast", "--variant", "ce:loss.contrast.w_high=0.5"],
         r"^--variant 'ce:loss\.contrast\.w_high=0\.5': 'ce' is the name of a method"),
        (["--methods", "ce", "--variant", "a:loss.contrast.w_high=0.5",
          "--variant", "a:loss.contrast.w_high=0.4"],
         r"^--variant 'a:loss\.contrast\.w_high=0\.4': 'a' is the name of another --variant"),
        (["--k-sweep", "0.5", "--variant", "K=0.5:loss.contrast.w_high=0.5"],
         r"'K=0\.5' is the name of a --k-sweep run"),
        (["--methods", "ce", "--reference", "nope"], r"^--reference 'nope': not one of the runs"),
        (["--methods", "ce", "--seeds", "0", "0"], r"^--seeds \[0, 0\]: give each seed once"),
    ],
)  # fmt: skip
def test_accuracy_checks_every_run_before_training(tiny, monkeypatch, argv, message):
    accuracy = load_tool("accuracy")
    monkeypatch.setattr(accuracy, "Trainer", no_work)
    monkeypatch.setattr(accuracy, "train_one", no_work)
    with pytest.raises(SystemExit, match=message):
        accuracy.main(["--config", str(tiny), "--seeds", "0", *argv])


def test_accuracy_prints_no_nan_for_one_seed():
    accuracy = load_tool("accuracy")
    assert accuracy.summary([0.5]) == "50.00 ± n/a"
    assert accuracy.summary([0.5, 0.7]) == "60.00 ± 14.14"


# --- pooled.py and fit_curve.py: one check of a result file -----------------------------


def _good(path: Path) -> dict:
    result(path, {"ce": {0: 0.4, 1: 0.5}, "x": {0: 0.5, 1: 0.6}}, runs={"ce/0": "ce_s0_1"})
    return json.loads(path.read_text())


def _set_miou(data: dict, value) -> None:
    data["rows"][1]["per_seed"]["1"]["miou"] = value


BROKEN = [
    (lambda d: d["rows"][0].pop("per_seed"), "rows[0].per_seed missing"),
    (lambda d: d["rows"][0].update(per_seed={"a": {"miou": 0.4}}),
     "rows[0].per_seed: seed 'a' is not an integer"),
    (lambda d: _set_miou(d, "0.5"), "rows[1].per_seed['1'].miou is not a finite number: '0.5'"),
    (lambda d: d["rows"][1]["per_seed"]["1"].pop("miou"), "rows[1].per_seed['1'].miou missing"),
    (lambda d: _set_miou(d, float("nan")),
     "rows[1].per_seed['1'].miou is not a finite number: nan"),
    (lambda d: d.update(runs=[1, 2]), "runs is not an object of run names (strings)"),
    (lambda d: d.update(runs={"x": [1]}), "runs is not an object of run names (strings)"),
    (lambda d: d.update(rows=None), "rows is not a list"),
    (lambda d: d.update(rows={}), "rows is not a list"),
    (lambda d: d["rows"].append(d["rows"][0]), "rows[2].method 'ce' is in an earlier row too"),
    (lambda d: d.update(overrides="optim.lr=1"), "overrides is not a list of KEY=VALUE strings"),
]  # fmt: skip


@pytest.mark.parametrize("tool", ["pooled", "fit_curve"])
@pytest.mark.parametrize(("breaking", "message"), BROKEN, ids=[m for _, m in BROKEN])
def test_a_malformed_result_file_is_one_line_naming_the_entry(tmp_path, tool, breaking, message):
    data = _good(tmp_path / "bad.json")
    breaking(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))  # NaN written as JSON's NaN, as json.dumps does
    other = tmp_path / "other.json"
    result(other, {"ce": {0: 0.3, 1: 0.3}, "x": {0: 0.4, 1: 0.4}})
    argv = [str(bad), str(other)] if tool == "pooled" else ["--schedule", "s", str(bad)]
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).main(argv)
    assert str(exit_info.value) == f"{bad}: {message}"


def test_pooled_asks_for_the_metric_it_pools(tmp_path):
    pooled = load_tool("pooled")
    a = result(tmp_path / "a.json", {"ce": {0: 0.4}, "x": {0: 0.5}})  # mIoU only
    with pytest.raises(SystemExit, match=r"rows\[0\]\.per_seed\['0'\]\.boundary_miou_5 missing"):
        pooled.main([str(a), "--metric", "boundary_miou_5"])


def test_one_seed_per_file_prints_n_a_and_writes_null_not_nan(tmp_path, capsys):
    a = result(tmp_path / "a.json", {"ce": {0: 0.4}, "x": {0: 0.5}})
    b = result(tmp_path / "b.json", {"ce": {0: 0.4}, "x": {0: 0.45}})
    load_tool("pooled").main([str(a), str(b)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("x "))
    assert "nan" not in line
    assert "+10.00 ± n/a (n=1)" in line and "+7.50 ± n/a" in line and "+7.50 ± 2.50 (n=2)" in line

    out = tmp_path / "fit.json"
    load_tool("fit_curve").main(["--schedule", "s", str(a), str(b), "--out", str(out)])
    assert "| +7.50 ± n/a |" in capsys.readouterr().out

    def no_constant(name):
        raise AssertionError(f"{name} in the JSON")

    written = json.loads(out.read_text(), parse_constant=no_constant)
    assert {row["method"]: row["se"] for row in written["rows"]} == {"ce": None, "x": None}


def test_fit_curve_refuses_a_file_for_a_schedule_name(tmp_path):
    fit = load_tool("fit_curve")
    a = result(tmp_path / "a.json", {"ce": {0: 0.4}, "x": {0: 0.5}})
    b = result(tmp_path / "b.json", {"ce": {0: 0.3}, "x": {0: 0.5}})
    with pytest.raises(SystemExit, match=r"a file, not a name; the name comes first: --schedule"):
        fit.main(["--schedule", str(a), str(b)])
    (tmp_path / "named").write_text("")
    with pytest.raises(SystemExit, match=r"^--schedule '.*named': a file, not a name"):
        fit.main(["--schedule", str(tmp_path / "named"), str(a)])


# --- runs_table.py ----------------------------------------------------------------------


def test_runs_table_leaves_out_a_broken_run_with_a_note(tmp_path, capsys):
    table = load_tool("runs_table")
    saved = config_from_dict(config(tmp_path)).to_yaml()
    evaluation = {"iteration": 2, "miou": 0.5, "boundary_miou": {"5": 0.25}}

    def run(name: str, metrics: str | None = None, config_text: str | bytes = saved) -> Path:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        if isinstance(config_text, bytes):
            (folder / "config.yaml").write_bytes(config_text)
        else:
            (folder / "config.yaml").write_text(config_text)
        if metrics is not None:
            (folder / "metrics.jsonl").write_text(metrics)
        return folder

    run("blank", json.dumps(evaluation) + "\n\n")
    run("cut", json.dumps(evaluation) + '\n{"iteration": 4, "mi')
    run("latin", config_text=b"run:\n  name: caf\xe9\n")
    (run("folder") / "config.yaml").unlink()
    (tmp_path / "runs" / "folder" / "config.yaml").mkdir()
    run("no_band", json.dumps({**evaluation, "boundary_miou": None}) + "\n")
    out = tmp_path / "table.json"
    table.main([str(tmp_path / "runs"), "--keys", "optim.lr", "--out", str(out)])
    printed = capsys.readouterr().out
    runs = tmp_path / "runs"
    assert f"note: {runs / 'cut'} left out: {runs / 'cut' / 'metrics.jsonl'} line 2: " in printed
    assert f"note: {runs / 'latin' / 'config.yaml'} left out: 'utf-8' codec" in printed
    assert f"note: {runs / 'folder' / 'config.yaml'} left out: Is a directory" in printed
    assert "| blank | 0.05 | 2 | 50.00 | 25.00 |" in printed
    assert "| no_band | 0.05 | 2 | 50.00 | — |" in printed
    rows = {row["run"]: row for row in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == ["blank", "no_band"] and rows["no_band"]["boundary_miou_5"] is None


# --- dropin.py --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("accuracy", "not a dropin.py result (no 'model' name); give another --out"),
        ({"model": "unet", "root": "data", "iters": 4, "runs": {"ce/0": {"miou": "x"}}},
         "not a dropin.py result (run 'ce/0' has no finite miou and boundary_miou_5); give "
         "another --out"),
        ({"model": "unet", "root": "data", "iters": 4, "runs": {"ce": {}}},
         "not a dropin.py result (run 'ce' is not ARM/SEED); give another --out"),
    ],
)  # fmt: skip
def test_dropin_refuses_an_out_file_that_is_not_its_own(tmp_path, monkeypatch, capsys, content,
                                                       message):  # fmt: skip
    dropin = load_tool("dropin")
    monkeypatch.setattr(dropin, "train_one", no_work)
    learnable_folder(tmp_path / "data", count=2)
    out = tmp_path / "out.json"
    if content == "accuracy":
        result(out, {"ce": {0: 0.4}, "x": {0: 0.5}}, runs={"ce/0": "ce_s0_1"})
    else:
        out.write_text(json.dumps(content))
    with pytest.raises(SystemExit):
        dropin.main(["--root", str(tmp_path / "data"), "--out", str(out)])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_dropin_names_the_contrast_option_that_fails(monkeypatch, capsys):
    dropin = load_tool("dropin")
    with pytest.raises(SystemExit):
        dropin.main(["--contrast", "loss_weight=[1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--contrast 'loss_weight=[1': not a YAML value (expected ',' or ']', "
                        "but got '<stream end>')")  # fmt: skip

    def torch_refuses(*_args, **_kwargs):  # as nn.Linear does a negative width
        raise RuntimeError("Trying to create tensor with negative dimension -1: [-1, 4]\nmore")

    torch_refuses.__signature__ = inspect.signature(dropin.ContextrastLoss)  # its options
    monkeypatch.setattr(dropin, "ContextrastLoss", torch_refuses)
    with pytest.raises(SystemExit):
        dropin.main(["--contrast", "hidden_channels=-1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--contrast hidden_channels=-1: Trying to create tensor with negative "
                        "dimension -1: [-1, 4]")  # fmt: skip


# --- training_cost.py -------------------------------------------------------------------


def test_training_cost_refuses_an_unknown_timm_backbone_at_once(monkeypatch, capsys):
    cost = load_tool("training_cost")
    monkeypatch.setattr(cost, "create_model", no_work)
    monkeypatch.setattr(sys, "argv", ["training_cost.py", "--model", "tu-nonexistent_net"])
    with pytest.raises(SystemExit):
        cost.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--model 'tu-nonexistent_net': timm has no backbone 'nonexistent_net' "
                        "(see timm.list_models())")  # fmt: skip


def test_training_cost_without_ce_prints_a_dash_for_its_ratios(tmp_path, monkeypatch, capsys):
    cost = load_tool("training_cost")
    monkeypatch.setattr(cost, "peak_memory_child", lambda *_: 5.0)  # no subprocess
    out = tmp_path / "cost.json"
    monkeypatch.setattr(sys, "argv", [
        "training_cost.py", "--methods", "contextrast", "--rounds", "1", "--size", "32", "32",
        "--batch", "2", "--classes", "2", "--out", str(out),
    ])  # fmt: skip
    cost.main()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("contextrast"))
    assert line.split()[2:4] == ["—", "—"] and line.split()[-1] == "—"
    (row,) = json.loads(out.read_text())["rows"]
    assert row["time_ratio_to_ce"] is None and row["memory_ratio_to_ce"] is None
