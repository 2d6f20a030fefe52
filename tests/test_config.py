import dataclasses
import re

import pytest

from contextrast.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    read_yaml,
)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_papers_contrastive_settings():
    c = Config()
    assert c.loss.contrast.layer_weights == [0.1, 0.4, 0.7, 1.0]
    assert (c.loss.contrast.w_high, c.loss.contrast.bane_ratio) == (0.7, 0.5)
    assert (c.loss.contrast.loss_weight, c.optim.momentum, c.optim.power) == (0.1, 0.9, 0.9)


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("contextrast", ["ContextrastLoss"]),
        ("pixel_contrast", ["PixelContrastLoss", "PixelContrastMemory"]),
        ("ms_cs", ["MultiScaleCrossScaleLoss"]),
        ("region_contrast", ["RegionContrastLoss"]),
    ],
)
def test_every_loss_argument_is_a_config_key_with_the_constructors_default(
    name, classes, monkeypatch
):
    """The constructor is the one source: each of its arguments (but the ones the model and
    dataset decide) is reachable from a config, defaults to the constructor's default, and
    reaches the constructor unchanged."""
    import inspect

    import contextrast.engine.builders as builders
    from contextrast import contrast
    from contextrast.config import NOT_CONFIG

    expected = {}
    for cls_name in classes:
        for p in list(inspect.signature(getattr(contrast, cls_name)).parameters.values()):
            if p.name not in NOT_CONFIG:
                value = p.default
                expected[p.name] = list(value) if isinstance(value, tuple) else value
    section = builders.LOSSES[name][1]
    config = config_from_dict({"loss": {"name": name}})
    got = dataclasses.asdict(getattr(config.loss, section))
    memory = got.pop("memory", None)
    assert got == expected and memory in (None, False)
    received = {}

    class Recorder:
        def __init__(self, num_classes, channels, **kwargs):
            received.update(kwargs)

    monkeypatch.setitem(builders.LOSSES, name, (Recorder, section))
    if name == "pixel_contrast":
        monkeypatch.setattr(
            builders, "PixelContrastMemory", lambda loss, **queue: received.update(queue)
        )
        config = config_from_dict({"loss": {"name": name, "pixel_contrast": {"memory": True}}})
    builders.build_contrast(config, 3, [4, 6, 8, 10])
    assert received == expected


def test_a_bad_loss_value_is_a_config_error_naming_its_section():
    from contextrast.engine.builders import build_contrast

    for overrides, message in (
        ({"contrast": {"bane_ratio": 1.5}}, "loss.contrast: bane_ratio must be"),
        ({"contrast": {"layer_weights": [1.0]}}, "loss.contrast: layer_weights has 1 entries"),
        ({"name": "ms_cs", "ms_cs": {"feature_indices": [0, 7]}}, "loss.ms_cs: feature_indices"),
    ):
        config = config_from_dict({"loss": overrides})
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_contrast(config, 3, [4, 6, 8, 10])


def test_load_and_override(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.02, iters: 100}\ndata: {crop_size: [64, 64]}\n")
    c = load_config(path, ["optim.lr=0.05", "data.options.length=10", "model.pretrained=/w.pth"])
    assert c.optim.lr == 0.05 and c.optim.iters == 100 and c.data.crop_size == [64, 64]
    assert c.data.options == {"length": 10} and c.model.pretrained == "/w.pth"
    assert config_from_dict(c.to_dict()) == c  # the resolved config round-trips


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("optim: {lrr: 1}", [], "unknown key 'optim.lrr'; allowed: ['name', 'lr', 'momentum'"),
        ("optim: {lr: fast}", [], "optim.lr: 'fast' is not float"),
        ("optim: {amp: fp8}", [], "optim.amp: 'fp8' is not one of ['none', 'bf16', 'fp16']"),
        (
            "loss: {name: focal}",
            [],
            "loss.name: 'focal' is not one of ['ce', 'contextrast', 'pixel",
        ),
        ("data: {crop_size: 512}", [], "data.crop_size: 512 is not a list of int"),
        ("run: {}", ["optim.iters=0"], "optim.iters: must be >= 1"),
        ("run: {}", ["nosection.x=1"], "unknown key 'nosection'; allowed: ['run', 'model'"),
        ("run: {}", ["optim.lr"], "expected key=value"),
        ("run: {}", ["optim.lr.x=1"], "optim.lr is not a section"),
        ("run: [1, 2]", [], "run: expected a mapping"),
        ("", [], "the file is empty; expected sections (run, model, data"),
        ("# only a comment\n", ["optim.lr=0.1"], "the file is empty; expected sections"),
        ("- a\n- b\n", ["optim.lr=0.1"], "the file is a list, not a mapping; expected"),
        ("optim: 5", ["optim.lr=0.1"], "optim: 5 is not a section (a mapping of keys)"),
        ("optim: 5", [], "optim: expected a mapping, got 5"),
        ("run: {name: ../../etc}", [], "run.name: '../../etc' must be one folder name (no '/'"),
        ("run: {}", ["run.name=.."], "run.name: '..' must be one folder name"),
        ("run: {name: x}\nrun: {name: y}\n", [], "line 2: not valid YAML (key 'run' given twice"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", [], "line 3: not valid YAML (key 'lr' given twice"),
        ("optim: {lr: .inf}", [], "optim.lr: must be finite and > 0"),
        ("optim: {lr: 1e400}", [], "optim.lr: must be finite and > 0"),
        ("eval: {mode: slide}", ["eval.stride=[0, 0]"], "eval.stride: must be >= 1 pixel"),
        ("run: {}", ["eval.crop_size=[0, 64]"], "eval.crop_size: must be >= 1 pixel"),
        ("run: {}", ["run.name=' '"], "run.name: ' ' must be one folder name"),
        ("run: {}", ["run.name=' x'"], "or spaces around it"),
        ("run: {}", ['run.name="a\\0b"'], "run.name: 'a\\x00b' must be one folder name"),
        ("run: {}", ["model.std=[.inf, 1, 1]"], "model.std: must be 3 values (R, G, B), each fin"),
        ("run: {}", ["model.mean=[.nan, 0, 0]"], "model.mean: must be 3 finite values"),
        ("optim:\n\tlr: 1\n", [], "line 2: not valid YAML (found character '\\t' that cannot"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(tmp_path / "c.yaml") in str(error.value)


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml line \d+: not valid YAML"):
        load_config(write(tmp_path, "optim:\n  lr: [1,\n"))


def test_merge_keys_still_merge(tmp_path):
    text = "base: &b {lr: 0.1, iters: 7}\noptim:\n  <<: *b\n  lr: 0.03\n"
    assert read_yaml(text)["optim"] == {"lr": 0.03, "iters": 7}


def test_a_binary_file_or_a_folder_is_named(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfeoptim: 1")
    with pytest.raises(ConfigError, match=r"bin.yaml: not UTF-8 text \(byte 0: invalid start"):
        load_config(tmp_path / "bin.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"config file .*dir.yaml is a folder; name a .yaml"):
        load_config(tmp_path / "dir.yaml")


def test_exponents_without_a_dot_are_floats_in_files_and_overrides(tmp_path):
    # PyYAML alone reads 1e-4 as the string "1e-4" (YAML 1.1 wants 1.0e-4).
    c = load_config(write(tmp_path, "optim: {lr: 1e-4, weight_decay: 5E-4}"), ["optim.lr=2e-3"])
    assert c.optim.lr == 0.002 and c.optim.weight_decay == 0.0005
    data = apply_overrides({}, ["run.name=1e3x", "eval.scales=[1e0, 2.5]", "optim.iters=10"])
    assert data == {"run": {"name": "1e3x"}, "eval": {"scales": [1.0, 2.5]}, "optim": {"iters": 10}}
    assert isinstance(data["optim"]["iters"], int)


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["eval.scales=[0.75, 1.0]", "eval.flip=true", "run.name=a=b"])
    assert data == {"eval": {"scales": [0.75, 1.0], "flip": True}, "run": {"name": "a=b"}}
