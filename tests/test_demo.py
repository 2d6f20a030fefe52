import json

import pytest

from contextrast import demo


def test_evidence_lines_give_paired_differences(tmp_path):
    path = tmp_path / "bench.json"
    rows = [
        {"method": "ce", "miou": [0.40, 0.50, 0.30], "boundary_miou_5": [0.2, 0.2, 0.2]},
        {"method": "contextrast", "miou": [0.42, 0.49, 0.33], "boundary_miou_5": [0.3, 0.2, 0.1]},
    ]
    path.write_text(json.dumps({"seeds": [0, 1, 2], "rows": rows}))
    lines = demo.evidence_lines(path)
    assert lines[0].startswith(f"Evidence — {path} (3 paired seeds")
    # Δ mIoU per seed: +2, −1, +3 → mean 1.33, sd 2.08
    assert lines[1] == (
        "  mIoU: CE 40.00, Contextrast 41.33; paired Δ +1.33 ± 2.08 (+2.00, -1.00, +3.00)"
    )
    assert "paired Δ +0.00 ± 10.00 (+10.00, +0.00, -10.00)" in lines[2]
    assert "no multi-seed benchmark result" in demo.evidence_lines(tmp_path / "none.json")[0]


def test_demo_trains_the_builtin_slices_with_seed_zero():
    overrides = demo.demo_overrides("inia19", "ce", ["optim.iters=2"])
    assert overrides[:3] == ["data.dataset=inia19", "data.root=null", "run.seed=0"]
    assert overrides[-1] == "optim.iters=2"
    config = demo.load_config(demo.SETS["inia19"][0] / "ce.yaml", overrides)
    assert (config.data.dataset, config.data.root, config.run.name) == ("inia19", None, "inia19_ce")
    with pytest.raises(KeyError):
        demo.demo_overrides("voc", "ce", [])
