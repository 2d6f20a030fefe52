"""Evidence that cannot mix runs: every run a benchmark table reads is the run of exactly the
settings the table names (issue 28, item 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from contextrast.config import ConfigError, config_from_dict
from contextrast.engine import Trainer, differing_settings, finished_metrics, settings_key
from tests.benchmarks import load_tool
from tests.engine.runs import config, learnable_folder


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    learnable_folder(tmp_path / "data", count=4)
    monkeypatch.chdir(tmp_path)  # accuracy.py writes runs/ under the working folder
    return tmp_path


def write_config(path: Path, workspace: Path, **optim) -> Path:
    data = config(workspace, loss={"name": "ce"}, optim={"iters": 2, **optim})
    data["eval"]["boundary_widths"] = [5]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_settings_key_changes_with_every_setting_but_the_run_s_place(tmp_path):
    base = config_from_dict(config(tmp_path))
    moved = config_from_dict(config(tmp_path, name="elsewhere"))
    moved.run.output_dir = "other"
    assert settings_key(base) == settings_key(moved)
    for section, key, value in [("optim", "lr", 0.02), ("optim", "iters", 7), ("run", "seed", 4)]:
        other = config_from_dict(config(tmp_path, **{section: {key: value}}))
        assert settings_key(other) != settings_key(base)
        assert differing_settings(base.to_dict(), other.to_dict()) == [f"{section}.{key}"]


def test_finished_metrics_refuses_a_folder_of_other_settings(workspace):
    c = config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 2}))
    Trainer(c).fit()
    assert finished_metrics(c)["iteration"] == 2
    edited = config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 2, "lr": 0.5}))
    with pytest.raises(
        ConfigError, match=r"holds a run of other settings \(optim\.lr differs from"
    ):
        finished_metrics(edited)


def test_accuracy_trains_again_after_an_edit_and_never_extends_a_shorter_run(workspace, capsys):
    accuracy = load_tool("accuracy")
    path = write_config(workspace / "cfg" / "tiny.yaml", workspace)
    common = ["--config", str(path), "--methods", "ce", "--seeds", "0"]

    def bench(out: str, *extra: str) -> dict:
        accuracy.main([*common, "--out", out, *extra])
        return json.loads((workspace / out).read_text())

    first = bench("a.json")
    (run_a,) = first["runs"].values()
    write_config(path, workspace, lr=0.5)  # the user edits the config file
    second = bench("b.json")
    (run_b,) = second["runs"].values()
    assert run_a != run_b
    saved = yaml.safe_load((workspace / "runs/bench_cfg" / run_b / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.5
    # The same command again reads the finished run instead of training it a second time.
    assert bench("c.json")["runs"] == second["runs"]
    log = (workspace / "runs/bench_cfg" / run_b / "train.log").read_text()
    assert log.count("training ") == 1

    longer = bench("d.json", "--iters", "3")
    (run_d,) = longer["runs"].values()
    assert run_d not in (run_a, run_b)
    log = (workspace / "runs/bench_cfg" / run_d / "train.log").read_text()
    assert "resumed" not in log and "for 3 iterations (from 0)" in log
    (evaluations,) = longer["evaluations"].values()
    assert [e["iteration"] for e in evaluations] == [3]
    # The 2-iteration run is left as it was.
    short = json.loads((workspace / "runs/bench_cfg" / run_b / "metrics.jsonl").read_text())
    assert short["iteration"] == 2
    capsys.readouterr()


def result(
    path: Path, rows: dict[str, dict[int, float]], runs: dict | None = None, overrides=()
) -> Path:
    """A minimal accuracy.py result: method → seed → mIoU (a fraction)."""
    data = {
        "benchmark": "accuracy",
        "config": "c.yaml",
        "overrides": list(overrides),
        "rows": [
            {"method": m, "per_seed": {str(s): {"miou": v} for s, v in seeds.items()}}
            for m, seeds in rows.items()
        ],
    }
    if runs is not None:
        data["runs"] = runs
    path.write_text(json.dumps(data))
    return path


def test_pooled_mean_and_standard_error_by_hand(tmp_path, capsys):
    pooled = load_tool("pooled")
    a = result(tmp_path / "a.json", {"ce": {0: 0.50, 1: 0.50}, "x": {0: 0.51, 1: 0.53}})
    b = result(tmp_path / "b.json", {"ce": {0: 0.40, 1: 0.40}, "x": {0: 0.40, 1: 0.42}})
    pooled.main([str(a), str(b)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("x "))
    # Δ: a +1, +3 (sd √2); b 0, +2 (sd √2). Mean of means 1.5, s.e. √(2/2 + 2/2) / 2 = 0.71;
    # pooled seeds: mean 1.5, sd √(5/3) / √4 = 0.65.
    assert "+2.00 ± 1.41 (n=2)" in line and "+1.00 ± 1.41 (n=2)" in line
    assert "+1.50 ± 0.71" in line and "+1.50 ± 0.65 (n=4)" in line


def test_pooled_counts_each_run_once(tmp_path):
    pooled = load_tool("pooled")
    a = result(tmp_path / "a.json", {"ce": {0: 0.5}, "x": {0: 0.6}}, {"ce/0": "ce_s0_1"})
    with pytest.raises(SystemExit, match="the same result as"):
        pooled.main([str(a), str(a)])
    copy = tmp_path / "copy.json"
    copy.write_bytes(a.read_bytes())
    with pytest.raises(SystemExit, match="the same result as"):
        pooled.main([str(a), str(copy)])
    b = result(tmp_path / "b.json", {"ce": {0: 0.4}, "x": {0: 0.3}}, {"ce/0": "ce_s0_1"})
    with pytest.raises(SystemExit, match=r"holds the run ce_s0_1, which .*a\.json holds too"):
        pooled.main([str(a), str(b)])


def test_pooled_notes_the_methods_it_leaves_out(tmp_path, capsys):
    pooled = load_tool("pooled")
    a = result(tmp_path / "a.json", {"ce": {0: 0.5}, "x": {0: 0.6}, "y": {0: 0.7}})
    b = result(tmp_path / "b.json", {"ce": {0: 0.4}, "x": {0: 0.3}})
    pooled.main([str(a), str(b)])
    out = capsys.readouterr().out
    assert f"note: y left out: not in {b}" in out


def test_pooled_before_pairs_only_the_same_settings(tmp_path, capsys):
    pooled = load_tool("pooled")
    axial = ["data.root=data/inia19/axial"]
    after = result(tmp_path / "after.json", {"ce": {0: 0.5}, "x": {0: 0.6}}, overrides=axial)
    before = result(tmp_path / "before.json", {"ce": {0: 0.4}, "x": {0: 0.3}})
    with pytest.raises(SystemExit, match=r"--before .*before\.json ran c\.yaml \[\] .*but"):
        pooled.main([str(after), "--before", str(before)])
    before = result(tmp_path / "before.json", {"ce": {0: 0.4}, "x": {0: 0.3}}, overrides=axial)
    pooled.main([str(after), "--before", str(before)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("x "))
    assert "+30.00" in line  # 0.6 after against 0.3 before


def test_pooled_refuses_another_benchmark_s_result_in_one_line(tmp_path):
    pooled = load_tool("pooled")
    other = tmp_path / "cost.json"
    other.write_text(json.dumps({"benchmark": "training_cost", "rows": [{"case": 1}]}))
    with pytest.raises(SystemExit, match=r"cost.json: not an accuracy.py result \(benchmark: "):
        pooled.main([str(other)])


def test_dropin_refuses_an_out_file_of_other_settings(workspace):
    dropin = load_tool("dropin")
    out = workspace / "sgd.json"
    out.write_text(json.dumps({"model": "unet", "root": "data", "iters": 400, "runs": {}}))
    argv = ["--root", "data", "--out", str(out), "--optimizer", "adamw", "--lr", "1e-3"]
    with pytest.raises(SystemExit, match=r"holds runs of other settings \(optimizer sgd "):
        dropin.main(argv)
    with pytest.raises(SystemExit):
        dropin.main(["--root", "nowhere"])
    with pytest.raises(SystemExit):
        dropin.main(["--root", "data", "--iters", "0"])


def test_runs_table_names_each_run_s_settings_and_last_evaluation(workspace, capsys):
    table = load_tool("runs_table")
    c = config_from_dict(config(workspace, loss={"name": "ce"}, optim={"iters": 2}))
    Trainer(c).fit()
    unfinished = workspace / "runs" / "later"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(c.to_yaml())
    out = workspace / "table.json"
    table.main([str(workspace / "runs"), "--keys", "optim.lr", "--out", str(out)])
    rows = {row["run"]: row for row in json.loads(out.read_text())["rows"]}
    metrics = json.loads((c.run_dir / "metrics.jsonl").read_text())
    assert rows["run"]["miou"] == metrics["miou"] and rows["run"]["iteration"] == 2
    assert rows["run"]["optim.lr"] == 0.05 and rows["run"]["settings_key"] == settings_key(c)
    assert rows["later"]["miou"] is None
    assert "| later | 0.05 | None | unfinished | unfinished |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--keys optim\.lrr: not a config key"):
        table.main([str(workspace / "runs"), "--keys", "optim.lrr"])


def test_dropin_checks_its_loss_arguments_and_keys_the_file_by_them(workspace):
    dropin = load_tool("dropin")
    with pytest.raises(SystemExit):
        dropin.main(["--root", "data", "--contrast", "loss_weigth=0.03"])
    with pytest.raises(SystemExit):  # refused before any training
        dropin.main(["--root", "data", "--contrast", "start_step=-1"])
    out = workspace / "plain.json"
    saved = {"model": "unet", "root": str(workspace / "data"), "iters": 400, "optimizer": "sgd",
             "lr": 0.01, "contrast": {}, "runs": {}}  # fmt: skip
    out.write_text(json.dumps(saved))
    argv = ["--root", "data", "--out", str(out), "--contrast", "loss_weight=3e-2"]
    with pytest.raises(SystemExit, match=r"contrast \{\} \(asked: \{'loss_weight': 0\.03\}\)"):
        dropin.main(argv)


def test_merge_results_joins_invocations_of_one_benchmark_and_refuses_the_rest(tmp_path, capsys):
    merge = load_tool("merge_results")
    config = str(Path(__file__).resolve().parents[2] / "configs" / "inia19" / "contextrast.yaml")

    def part(name, rows, overrides=(), iters=None, runs=None):
        path = result(tmp_path / name, rows, runs=runs, overrides=overrides)
        data = json.loads(path.read_text())
        data.update(config=config, iters=iters, protocol="final")
        path.write_text(json.dumps(data))
        return path

    ce = part("ce.json", {"ce": {0: 0.5, 1: 0.6}}, runs={"ce/0": "ce_s0_a", "ce/1": "ce_s1_b"})
    # the same benchmark: an override that restates the config's own data.root
    other = part("l.json", {"ce+lovasz": {0: 0.55, 1: 0.7}, "ce": {0: 0.5}},
                 overrides=["data.root=data/inia19/coronal"])  # fmt: skip
    merge.main([str(ce), str(other), "--out", str(tmp_path / "m.json")])
    merged = json.loads((tmp_path / "m.json").read_text())
    rows = {row["method"]: row for row in merged["rows"]}
    assert rows["ce"]["miou"] == [0.5, 0.6] and rows["ce+lovasz"]["miou"] == [0.55, 0.7]
    assert merged["seeds"] == [0, 1] and merged["runs"] == {"ce/0": "ce_s0_a", "ce/1": "ce_s1_b"}
    assert [m["file"] for m in merged["merged_from"]] == [str(ce), str(other)]
    # pooled.py reads it as any accuracy.py result: Δ paired per seed
    load_tool("pooled").main([str(tmp_path / "m.json")])
    assert "ce+lovasz" in capsys.readouterr().out
    for bad, message in (
        (part("x.json", {"ce": {0: 0.51}}), r"ce seed 0 reads 0.51 but .*ce.json reads 0.5"),
        (part("y.json", {"ce": {2: 0.5}}, iters=8), r"iters 8 differs from None"),
        (part("z.json", {"ce": {2: 0.5}}, overrides=["optim.lr=0.5"]), r"is not that of"),
        (ce, r"a file is given twice"),
    ):
        with pytest.raises(SystemExit, match=message):
            merge.main([str(ce), str(bad), "--out", str(tmp_path / "n.json")])


def test_pooled_pools_the_tail_third_as_it_pools_miou(tmp_path, capsys):
    def with_tail(path, tails):
        data = json.loads(path.read_text())
        for row in data["rows"]:
            for seed, entry in row["per_seed"].items():
                entry["tail_miou"] = tails[row["method"]][int(seed)]
        path.write_text(json.dumps(data))
        return path

    # mIoU and the tail third move apart, so the printed Δ shows which one was pooled.
    a = result(tmp_path / "a.json", {"ce": {0: 0.50, 1: 0.50}, "x": {0: 0.50, 1: 0.50}})
    with_tail(a, {"ce": {0: 0.20, 1: 0.30}, "x": {0: 0.24, 1: 0.32}})
    load_tool("pooled").main([str(a), "--metric", "tail_miou"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("x "))
    assert "Δ tail_miou to ce" in out
    assert "+3.00 ± 1.41 (n=2)" in line  # Δ +4 and +2 points
