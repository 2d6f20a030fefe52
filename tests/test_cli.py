import inspect
import subprocess
import sys

import numpy as np
import pytest

import contextrast
from contextrast import cli, functional, metrics


def test_version_and_info(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == contextrast.__version__
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    import torch

    assert f"torch         {torch.__version__}" in out


def test_models_lists_every_preset(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in contextrast.list_models():
        assert name in out
    assert "hrnetv2_w48               hrnet_w48             hrnetv2" in out
    assert "tu-<timm name>" in out


def test_unknown_command_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "contextrast.cli", "nosuch"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "invalid choice: 'nosuch'" in result.stderr


@pytest.mark.parametrize(
    ("function", "params"),
    [
        (
            functional.representative_anchors,
            ["embeddings", "labels", "num_classes", "ignore_index"],
        ),
        (
            functional.pixel_anchor_loss,
            ["anchors", "embeddings", "labels", "temperature", "negative_mask"],
        ),
        (functional.class_error_maps, ["pred", "target", "num_classes", "ignore_index"]),
        (functional.distance_transform, ["mask"]),
        (functional.bane_select, ["distance", "error_maps", "ratio"]),
        (metrics.confusion_matrix, ["pred", "target", "num_classes", "ignore_index"]),
        (metrics.mean_iou, ["confusion"]),
        (metrics.boundary_band, ["target", "width", "ignore_index"]),
        (metrics.feature_metrics, ["embeddings", "labels", "ks"]),
        (
            contextrast.ContextrastLoss,
            [
                "num_classes",
                "in_channels",
                "embed_dim",
                "temperature",
                "layer_weights",
                "w_high",
                "bane_ratio",
                "loss_weight",
                "ignore_index",
            ],
        ),
    ],
)
def test_public_signatures_start_with_the_contract(function, params):
    names = list(inspect.signature(function).parameters)
    assert names[: len(params)] == params


# ------------------------------------------------------------------ train / eval / predict / export


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-iteration run on a folder fixture, for the commands that need a checkpoint."""
    from tests.data import fixtures

    tmp = tmp_path_factory.mktemp("cli")
    root = fixtures.folder(tmp / "data")
    config = tmp / "cfg.yaml"
    config.write_text(
        f"""
run: {{name: tiny, output_dir: {tmp / "runs"}}}
model: {{name: hrnetv2_w18_small}}
data: {{dataset: folder, root: {root}, crop_size: [32, 32], batch_size: 2, num_workers: 0}}
loss: {{name: contextrast, contrast: {{embed_dim: 8}}}}
optim: {{iters: 2}}
train: {{log_interval: 1}}
eval: {{crop_size: [32, 32], stride: [16, 16], boundary_widths: [1]}}
"""
    )
    assert cli.main(["train", str(config)]) == 0
    return tmp, config, tmp / "runs" / "tiny" / "best.pt"


def test_eval_and_predict(trained, capsys):
    import json

    import numpy as np
    import torch
    from PIL import Image

    tmp, config, checkpoint = trained
    assert (
        cli.main(["eval", str(config), "--checkpoint", str(checkpoint), "--set", "eval.mode=slide"])
        == 0
    )
    metrics = json.loads((checkpoint.parent / "eval_val.json").read_text())
    out = capsys.readouterr().out
    assert metrics["images"] == 3 and "mIoU" in out
    # the thirds by the training run's pixel counts (saved in its checkpoint)
    assert list(metrics["frequency_miou"]) == ["head", "middle", "tail"] and "tail mIoU" in out
    # the object-size mIoU (eval.object_sizes' default), a number or null per size
    assert list(metrics["size_miou"]) == ["tiny", "small", "medium", "large"]
    assert "tiny objects" in out and "large objects" in out
    images = tmp / "data" / "images" / "val"
    assert (
        cli.main(
            ["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp / "pred")]
        )
        == 0
    )
    mask = np.asarray(Image.open(tmp / "pred" / "img0_mask.png"))
    palette = {tuple(c) for c in torch.load(checkpoint, weights_only=True)["palette"]}
    assert mask.shape == (6, 8, 3) and {tuple(c) for c in mask.reshape(-1, 3)} <= palette
    assert (tmp / "pred" / "img2_overlay.png").is_file()
    # `export` of a run's checkpoint, both formats against the model:
    # tests/models/test_export.py::test_cli_export_takes_the_format_from_the_file_name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "missing.yaml"], "contextrast train: error: config file missing.yaml not found"),
        (
            ["train", "{config}", "--set", "optim.lrr=1"],
            "unknown key 'optim.lrr'; allowed: ['name', 'lr'",
        ),
        (
            ["train", "{config}", "--set", "optim.amp=fp8"],
            "'fp8' is not one of ['none', 'bf16', 'fp16']",
        ),
        (
            ["train", "{config}", "--set", "data.root=/nowhere", "--set", "run.name=other"],
            "contextrast train: error: folder: dataset root /nowhere does not exist",
        ),
        (["eval", "{config}", "--checkpoint", "/no.pt"], "checkpoint /no.pt: no such file"),
        (["train", "{config}", "--accept-changes"], "--accept-changes: only with --resume"),
        (
            ["train", "{config}", "--launcher", "slurm"],
            "--launcher slurm: SLURM_PROCID is None, expected a number; start each process",
        ),
        (
            ["predict", "--checkpoint", "{checkpoint}", "/no.png", "--out", "/tmp/x"],
            "input /no.png: no such file",
        ),
        (
            ["export", "--checkpoint", "/no.pt", "--out", "/tmp/x.pt2"],
            "checkpoint /no.pt: no such file",
        ),
    ],
)
def test_cli_errors_are_one_line(trained, capsys, argv, message):
    _, config, checkpoint = trained
    argv = [a.format(config=config, checkpoint=checkpoint) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "check-data"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: contextrast {command}" in capsys.readouterr().out


def test_analyze_commands(trained, capsys, tmp_path):
    import json

    from PIL import Image

    _, config, checkpoint = trained
    assert (
        cli.main(["analyze", "features", "--checkpoint", str(checkpoint), "--per-class", "20"]) == 0
    )
    assert "A " in capsys.readouterr().out
    out = tmp_path / "fig5"
    assert (
        cli.main(
            ["analyze", "boundary-similarity", "--checkpoint", str(checkpoint), "--out", str(out)]
        )
        == 0
    )
    rows = (out / "boundary_similarity.csv").read_text().splitlines()
    assert rows[0] == "layer,distance,similarity,pixels" and len(rows) == 1 + 4 * 10
    assert (out / "boundary_similarity.png").is_file()
    grid = tmp_path / "grid.png"
    argv = ["analyze", "grid", "--checkpoints", str(checkpoint), str(checkpoint), "--count", "2"]
    assert cli.main([*argv, "--out", str(grid)]) == 0
    # 2 rows x 4 panels of 6 x 8 px with 2-px gutters, magnified twice, under a 20-px title
    # band and above a legend of the classes.
    picture = np.asarray(Image.open(grid).convert("RGB"))
    assert picture.shape[1] == (4 * 10 - 2) * 2 and picture.shape[0] > 20 + (2 * 8 - 2) * 2
    for bad, message in (
        (["--scale", "0", "--out", str(grid)], "--scale: must be >= 1, got 0"),
        (["--out", str(tmp_path / "grid.jpg")], "the grid is written as PNG"),
    ):
        assert cli.main([*argv, *bad]) == 2
        assert message in capsys.readouterr().err
    sweep = ["analyze", "sweep", str(config), "--param", "optim.lr", "--values", "0.01", "0.02"]
    assert cli.main([*sweep, "--set", "optim.iters=1", "--out", str(tmp_path / "s.json")]) == 0
    table = json.loads((tmp_path / "s.json").read_text())
    assert [r["value"] for r in table["rows"]] == [0.01, 0.02]
    capsys.readouterr()
    ce = ["analyze", "boundary-similarity", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert cli.main([*ce, "--set", "loss.name=ce"]) == 2
    assert "needs a Contextrast run's projection heads" in capsys.readouterr().err


def test_losses_lists_every_loss_name_and_region_term_a_config_accepts(capsys):
    import typing

    from contextrast.config import LossConfig, RegionConfig

    assert cli.main(["losses"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line and not line[0].isspace()]
    accepted = typing.get_args(typing.get_type_hints(LossConfig)["name"])
    region = typing.get_args(typing.get_type_hints(RegionConfig)["name"])
    assert set(accepted) <= set(names) and set(region) - {"none"} <= set(names)


# ------------------------------------------------------------------ issue 20: images, datasets


def test_predict_refuses_set_keys_it_cannot_honour(trained, tmp_path, capsys):
    tmp, _, checkpoint = trained
    images = tmp / "data" / "images" / "val"
    argv = ["predict", "--checkpoint", str(checkpoint), str(images)]
    used = "eval.mode, eval.crop_size, eval.stride, eval.scales, eval.flip, model.mean, model.std"
    checked = "model.name, model.head, model.head_width, model.aux"
    for key in ("data.dataset=inia19", "data.root=/elsewhere", "optim.lr=0.1", "eval.flp=true"):
        assert cli.main([*argv, "--out", str(tmp_path / "p"), "--set", key]) == 2
        assert capsys.readouterr().err == (
            f"contextrast predict: error: --set {key.split('=')[0]}: predict does not use it "
            "(the checkpoint fixes the dataset, its classes and the training); it takes "
            f"{used}, and {checked} only as the checkpoint has them\n"
        )
        assert not (tmp_path / "p").exists()
    # The keys it uses are applied: a flip-averaged prediction is written.
    assert cli.main([*argv, "--out", str(tmp_path / "q"), "--set", "eval.flip=true"]) == 0
    assert (tmp_path / "q" / "img0_mask.png").is_file()


def test_predict_reads_16_bit_and_exif_rotated_images_as_viewers_show_them(trained, tmp_path):
    from PIL import Image

    _, _, checkpoint = trained
    grey = np.random.default_rng(3).integers(0, 256, (6, 8), dtype=np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(grey, mode="L").save(inputs / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(inputs / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.stack([grey] * 3, -1)).save(inputs / "turned.png", exif=exif)
    out = tmp_path / "out"
    assert (
        cli.main(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out)]) == 0
    )

    def read(name: str) -> np.ndarray:
        return np.asarray(Image.open(out / name))

    # The overlay is round((image + mask) / 2): it shows the image the model was given.
    rgb = np.stack([grey] * 3, -1).astype(np.float64)
    for name, image in (("eight", rgb), ("sixteen", rgb), ("turned", np.rot90(rgb, k=-1))):
        mask = read(f"{name}_mask.png")
        assert mask.shape == image.shape  # orientation 6: upright, 8 rows x 6 columns
        want = np.round(image * 0.5 + mask * 0.5).astype(np.uint8)
        assert (read(f"{name}_overlay.png") == want).all(), name
    assert read("turned_mask.png").shape == (8, 6, 3)
    assert (read("sixteen_mask.png") == read("eight_mask.png")).all()


def test_eval_with_a_moved_dataset_root_names_the_root(trained, tmp_path, capsys):
    _, config, checkpoint = trained
    moved = tmp_path / "moved"
    argv = ["eval", str(config), "--checkpoint", str(checkpoint), "--set", f"data.root={moved}"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"contextrast eval: error: folder: dataset root {moved} does not exist\n"
    )


def test_eval_refuses_an_out_it_cannot_write_before_evaluating(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    for out, message in [
        (tmp_path, f"--out {tmp_path} is a folder; name a .json file in it"),
        (tmp_path / "f" / "m.json", f"cannot write {tmp_path}/f/m.json: {tmp_path}/f is a file"),
    ]:
        argv = ["eval", "digits/contextrast.yaml", "--checkpoint",
                str(tmp_path / "none.pt"), "--out", str(out)]  # fmt: skip
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"contextrast eval: error: {message}" or (message in err and "\n" not in err)


def test_check_data_refuses_a_root_for_a_builtin_dataset(tmp_path, capsys):
    assert cli.main(["check-data", "--dataset", "digits", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "contextrast check-data: error: --root: the built-in dataset 'digits' has its own "
        "location; drop --root (or use --dataset folder for a folder of your own)"
    )
