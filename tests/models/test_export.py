"""Export (issue 20): any input size as predict computes it, the format from the file name,
eval mode without a warning, one-line errors for a bad output path. CPU, seconds."""

import dataclasses
import os
import warnings

import pytest
import torch

from contextrast import cli
from contextrast.config import config_from_dict
from contextrast.evaluation.inference import whole_logits
from contextrast.models import create_model, export_inference, export_onnx, writable_path

# Sizes that are not multiples of 32 (and one below 32): predict pads them, so must the
# exported graph.
ODD = [(1, 3, 70, 90), (2, 3, 33, 47), (1, 3, 6, 8)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("deeplabv3_r18", num_classes=3)


def predicted(model, images):
    """predict's logits for one view (whole-image protocol: padded to 32, cropped back)."""
    training = model.training
    try:
        with torch.no_grad():
            return whole_logits(model.eval().inference(), images)
    finally:
        model.train(training)


def training_mode_warnings(caught):
    return [str(w.message) for w in caught if "training mode" in str(w.message)]


def test_exported_programs_take_any_size_like_predict(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_path = export_onnx(model, tmp_path / "model.onnx", torch.zeros(1, 3, 64, 64))
        pt2_path = export_inference(model, tmp_path / "model.pt2", torch.zeros(1, 3, 64, 64))
    # Issue 20: every ONNX export warned "Exporting a model while it is in training mode"
    # (the inference wrapper was a new module, in training mode).
    assert training_mode_warnings(caught) == []
    assert model.training  # restored
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    program = torch.export.load(pt2_path).module()
    g = torch.Generator().manual_seed(1)
    for shape in ODD:
        images = torch.randn(shape, generator=g)
        want = predicted(model, images)
        with torch.no_grad():
            got = program(images)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), shape
        onnx_logits = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
        assert onnx_logits.shape == want.shape, shape
        # BatchNorm folded into the convolutions: float32 rounding only.
        assert (onnx_logits - want).abs().max() <= 1e-4 * want.abs().max(), shape


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("export") / "best.pt"
    config = config_from_dict({"model": {"name": "deeplabv3_r18"}})
    config = dataclasses.asdict(config)  # as a run saves it: every key
    state = {"config": config, "model": model.state_dict(), "classes": ["a", "b", "c"]}
    torch.save(state, path)
    return path


def test_cli_export_takes_the_format_from_the_file_name(model, checkpoint, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    # Issue 20: without --format, "--out m.onnx" wrote a torch.export archive.
    argv = ["export", "--checkpoint", str(checkpoint), "--size", "70", "90"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*argv, "--out", str(tmp_path / "m.onnx")]) == 0
    assert training_mode_warnings(caught) == []
    assert "ONNX opset 18" in capsys.readouterr().out
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 70, 90)
    want = predicted(model, images)
    got = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert cli.main([*argv, "--out", str(tmp_path / "m.pt2"), "--format", "pt2"]) == 0
    with torch.no_grad():
        assert torch.allclose(
            torch.export.load(tmp_path / "m.pt2").module()(images), want, atol=1e-5
        )


@pytest.mark.parametrize(
    ("out", "extra", "message"),
    [
        ("{tmp}/m.bin", [], "output {tmp}/m.bin: unknown suffix '.bin'; name it .pt2 "),
        ("{tmp}/m.bin", ["--format", "onnx"], "output {tmp}/m.bin: unknown suffix '.bin'; "),
        ("{tmp}/model", [], "output {tmp}/model: no suffix; name it .pt2 (torch.export "),
        (
            "{tmp}/m.pt2",
            ["--format", "onnx"],
            "output {tmp}/m.pt2 is a .pt2 name but the format is onnx; name it m.onnx or "
            "choose format pt2",
        ),
        (
            "{tmp}/m.onnx",
            ["--format", "pt2"],
            "output {tmp}/m.onnx is a .onnx name but the format is pt2; name it m.pt2 or "
            "choose format onnx",
        ),
        ("{tmp}", [], "output {tmp} is a folder; name a file in it, e.g. {tmp}/model.pt2"),
        ("{tmp}/f/m.onnx", [], "cannot write {tmp}/f/m.onnx: {tmp}/f is a file, not a folder"),
        ("{tmp}/f/deeper/m.pt2", [], "cannot write {tmp}/f/deeper/m.pt2: {tmp}/f is a file,"),
        ("{tmp}/" + "x" * 300 + ".onnx", [], "x.onnx: File name too long"),
        ("{tmp}/m.onnx", ["--size", "-5", "32"], "--size -5 32: expected H W from 1 to 16384"),
        ("{tmp}/m.pt2", ["--size", "100000", "8"], "--size 100000 8: expected H W from 1 to"),
    ],
)
def test_cli_export_refuses_a_bad_output_in_one_line(tmp_path, capsys, out, extra, message):
    # Issue 20: a folder, an unwritable path or a path under a file gave a traceback of
    # 15–22 lines after the whole export; the format and the path are now checked first
    # (here the checkpoint does not even exist).
    (tmp_path / "f").write_text("a file")
    out = out.format(tmp=tmp_path)
    argv = ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", out, *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contextrast export: error: ") and "\n" not in err
    assert message.format(tmp=tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_folder_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        argv = ["export", "--checkpoint", "/none.pt", "--out", str(locked / "m.pt2")]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"contextrast export: error: cannot write {locked}/m.pt2: Permission denied"
    finally:
        locked.chmod(0o700)


def test_writable_path_probes_without_leaving_a_file(tmp_path):
    path = writable_path(tmp_path / "new" / "m.onnx")
    assert path.parent.is_dir() and not path.exists()
    kept = tmp_path / "kept.pt2"
    kept.write_bytes(b"old")
    assert writable_path(kept) == kept and kept.read_bytes() == b"old"
    with pytest.raises(ValueError, match=r"m\.onnx is a \.onnx name but the format is pt2"):
        export_inference(
            create_model("deeplabv3_r18", 3), tmp_path / "m.onnx", torch.zeros(1, 3, 64, 64)
        )
