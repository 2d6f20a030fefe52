import importlib.util
from pathlib import Path

import pytest

from contextrast.config import load_config
from contextrast.engine.builders import LOSS_DESCRIPTIONS

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_configs", ROOT / "tools" / "make_configs.py")
make_configs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_configs)
GENERATED = make_configs.files()


def test_configs_are_up_to_date_and_cover_table_2():
    on_disk = sorted(ROOT.joinpath("contextrast", "configs").rglob("*.yaml"))
    assert on_disk == sorted(GENERATED)
    for path, text in GENERATED.items():
        assert path.read_text() == text, f"{path} is stale: run make configs"
    # 3 models x 5 datasets x {CE, Contextrast, multi-/cross-scale}, pixel and region contrast
    # on Cityscapes, 2 Table 6 ablations on Cityscapes and CamVid, the 2 digits configs and
    # the INIA19 benchmark's CE and Contextrast under its 4 schedules; Contextrast++ on every
    # model and dataset (its Table III) and its 3 Table VIII ablations on Cityscapes HRNet.
    assert len(GENERATED) == 45 + 2 + 4 + 2 + 2 * 4 + 15 + 3
    names = {f"{p.parent.name}/{p.stem}" for p in GENERATED}
    assert {
        "cityscapes/hrnetv2_w48_pixel_contrast",
        "camvid/hrnetv2_w48_contextrast_ccl_semi_hard",
        "ade20k/deeplabv3_r101_ms_cs",
        "coco_stuff/ocrnet_hrnetv2_w48_ce",
        "inia19/contextrast",
        "inia19/ce_adamw_plateau",
        "pascal_context/ocrnet_hrnetv2_w48_contextrast_pp",
        "cityscapes/hrnetv2_w48_contextrast_pp_fusion",
    } <= names


def test_the_inia19_schedules_differ_only_in_the_optimiser_and_its_evaluation():
    from contextrast.engine import differing_settings

    base = load_config(ROOT / "configs/inia19/contextrast.yaml").to_dict()
    for schedule in ("sgd_plateau", "adamw", "adamw_plateau"):
        other = load_config(ROOT / f"configs/inia19/contextrast_{schedule}.yaml").to_dict()
        changed = differing_settings(base, other)
        assert changed and all(
            key.startswith("optim.") or key == "train.eval_interval" for key in changed
        ), changed


@pytest.mark.parametrize("path", sorted(GENERATED), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_loads(path):
    config = load_config(path)
    assert config.loss.name in LOSS_DESCRIPTIONS
    assert config.loss.name in path.stem


@pytest.mark.parametrize(
    ("dataset", "crop", "batch", "iters", "scales"),
    [
        ("cityscapes", [512, 1024], 8, 40000, [1.0]),
        ("camvid", [352, 480], 16, 6000, [0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
        ("ade20k", [512, 512], 12, 80000, [0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
        ("coco_stuff", [512, 512], 16, 60000, [0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
        ("pascal_context", [512, 512], 16, 60000, [0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
    ],
)
def test_paper_settings(dataset, crop, batch, iters, scales):
    for model in ("deeplabv3_r101", "hrnetv2_w48", "ocrnet_hrnetv2_w48"):
        c = load_config(ROOT / "configs" / dataset / f"{model}_contextrast.yaml")
        assert (c.data.crop_size, c.data.batch_size, c.optim.iters) == (crop, batch, iters)
        assert c.eval.scales == scales and c.eval.flip == (scales != [1.0])
        assert c.loss.contrast.layer_weights == [0.1, 0.4, 0.7, 1.0]
        assert (c.loss.contrast.loss_weight, c.loss.contrast.w_high) == (0.1, 0.7)
        assert c.loss.contrast.bane_ratio == 0.5 and c.model.name == model


def test_a_packaged_config_name_resolves_from_any_folder(tmp_path, monkeypatch):
    from contextrast.config import CONFIG_DIR, ConfigError, load_config, resolve_config

    monkeypatch.chdir(tmp_path)  # no configs/ here
    name = "cityscapes/hrnetv2_w48_contextrast.yaml"
    assert resolve_config(name) == CONFIG_DIR / name
    assert resolve_config(f"configs/{name}") == CONFIG_DIR / name
    assert load_config(name).model.name == "hrnetv2_w48"
    local = tmp_path / "cityscapes"
    local.mkdir()
    (local / "hrnetv2_w48_contextrast.yaml").write_text("model: {name: hrnetv2_w18_small}\n")
    assert load_config(name).model.name == "hrnetv2_w18_small"  # a path wins over a name
    with pytest.raises(ConfigError, match=r"config file nope\.yaml not found"):
        load_config("nope.yaml")
