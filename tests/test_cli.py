import inspect
import subprocess
import sys

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
