"""The benchmark tools check their arguments before any work, each in one line."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks import load_tool


def refuses_before_work(monkeypatch, capsys, tool, work, argv, message):
    """``tool``'s main exits 2 with ``message`` on its last stderr line before ``work`` (the
    tool's first function that does the work) is called."""
    module = load_tool(tool)
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
    monkeypatch.setattr(module, work, lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "nope"], "--methods 'nope': choose from ['ce', 'contextrast'"),
        (["--size", "250", "512"], "--size 250 512: each side a multiple of 32"),
        (["--classes", "1"], "--classes 1: must be >= 2"),
        (["--rounds", "0"], "--rounds 0: must be >= 1"),
        (["--batch", "1"], "--batch 1: must be >= 2 (BatchNorm needs two images)"),
        (["--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
        (["--model", "nosuch"], "--model 'nosuch': choose from ["),
        (["--compile", "nosuch"], "--compile 'nosuch': choose from ["),
    ],
)
def test_training_cost_refuses_bad_arguments_at_once(monkeypatch, capsys, argv, message):
    refuses_before_work(monkeypatch, capsys, "training_cost", "create_model", argv, message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--iters", "0"], "--iters 0: must be >= 1"),
        (["--jobs", "0"], "--jobs 0: must be >= 1"),
    ],
)
def test_accuracy_refuses_bad_counts_at_once(capsys, argv, message):
    accuracy = load_tool("accuracy")
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--methods", "ce", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "not a dropin.py result"),
        ("[]", [], "not a dropin.py result (no 'runs' mapping)"),
        ("{}", [], "not a dropin.py result (no 'runs' mapping)"),
        (None, ["--threads", "0"], "--threads 0: must be >= 1"),
        (None, ["--lr", "nan"], "--lr nan: must be finite and > 0"),
    ],
)
def test_dropin_refuses_a_bad_out_file_or_count_before_training(
    tmp_path, monkeypatch, capsys, content, extra, message
):
    from tests.engine.runs import learnable_folder

    dropin = load_tool("dropin")
    learnable_folder(tmp_path / "data", count=2)
    out = tmp_path / "out.json"
    if content is not None:
        out.write_text(content)
    monkeypatch.setattr(dropin, "train_one", lambda *a: pytest.fail("training started"))
    with pytest.raises(SystemExit) as exit_info:
        dropin.main(["--root", str(tmp_path / "data"), "--out", str(out), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_accuracy_variant_keeps_the_commas_of_a_list():
    accuracy = load_tool("accuracy")
    name, (method, overrides) = accuracy.parse_variant(
        "last:loss.contrast.layer_weights=[0,0,0,1],optim.lr=0.002"
    )
    assert (name, method) == ("last", "contextrast")
    assert overrides == ["loss.contrast.layer_weights=[0,0,0,1]", "optim.lr=0.002"]
    with pytest.raises(SystemExit, match="expected NAME:KEY=VALUE"):
        accuracy.parse_variant("last")


def test_accuracy_reads_the_tail_third_where_the_runs_report_it():
    accuracy = load_tool("accuracy")

    def entry(miou, tail):
        thirds = {"head": 0.9, "middle": 0.5, "tail": tail}
        return {"miou": miou, "boundary_miou": {"5": miou / 2}, "frequency_miou": thirds}

    history = [entry(0.4, 0.2), entry(0.6, 0.3)]
    assert accuracy.reading(history, "final") == {
        "miou": 0.6, "boundary_miou_5": 0.3, "tail_miou": 0.3
    }  # fmt: skip
    assert accuracy.reading(history, "last2")["tail_miou"] == pytest.approx(0.25)
    # a run from before the thirds, or a tail third without classes (null): no tail reading
    old = {"miou": 0.5, "boundary_miou": {"5": 0.4}}
    assert "tail_miou" not in accuracy.reading([old], "final")
    assert "tail_miou" not in accuracy.reading([entry(0.4, None)], "final")
    # and the table says which runs lack it
    results = {"ce": {0: {"tail_miou": 0.3}, 1: {}}, "contextrast": {0: {"tail_miou": 0.2}}}
    note = accuracy.missing_tails(results)
    assert note.startswith("tail mIoU: none for ce seed 1 (") and "contextrast" not in note
    assert accuracy.missing_tails({"ce": {0: {"tail_miou": 0.3}}}) is None


def test_accuracy_keeps_the_object_size_miou_where_every_reading_has_it():
    accuracy = load_tool("accuracy")

    def entry(large, tiny):
        sizes = {"tiny": tiny, "small": 0.5, "medium": 0.6, "large": large}
        return {"miou": 0.5, "boundary_miou": {"5": 0.4}, "size_miou": sizes}

    history = [entry(0.8, None), entry(0.6, 0.2)]
    assert accuracy.reading(history, "final")["size_miou"] == {
        "tiny": 0.2, "small": 0.5, "medium": 0.6, "large": 0.6
    }  # fmt: skip
    averaged = accuracy.reading(history, "last2")["size_miou"]
    assert averaged["large"] == pytest.approx(0.7) and averaged["tiny"] is None  # a null size
    assert "size_miou" not in accuracy.reading(
        [{"miou": 0.5, "boundary_miou": {"5": 0.4}}], "final"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--classes", "10", "1"], "--classes 1: each count must be >= 2"),
        (["--size", "64", "100"], "--size 64 100: each side a multiple of 32"),
        (["--repeats", "0"], "--repeats 0: must be >= 1"),
    ],
)
def test_pair_forms_refuses_bad_arguments_at_once(monkeypatch, capsys, argv, message):
    refuses_before_work(monkeypatch, capsys, "pair_forms", "case", argv, message)


def test_pair_forms_times_both_forms_and_names_the_auto_one(monkeypatch, tmp_path):
    import json

    forms = load_tool("pair_forms")
    out = tmp_path / "forms.json"
    argv = ["pair_forms.py", "--classes", "3", "24", "--batch", "2", "--size", "64", "64",
            "--repeats", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    threads = forms.torch.get_num_threads()
    try:
        forms.main()
    finally:
        forms.torch.set_num_threads(threads)  # the tool sets its own; later tests keep theirs
    rows = json.loads(out.read_text())["rows"]
    assert [(r["classes"], r["auto"]) for r in rows] == [(3, "dense"), (24, "sparse")]
    assert all(r["dense_s"] > 0 and r["sparse_s"] > 0 for r in rows)
