import json
from pathlib import Path

import pytest

from contextrast import demo


def test_evidence_lines_give_paired_differences_and_pick_the_best_region_loss(tmp_path):
    path = tmp_path / "evidence.json"
    rows = [
        {"method": "ce", "miou": [0.40, 0.50, 0.30], "boundary_miou_5": [0.2, 0.2, 0.2]},
        {"method": "ce+dice", "miou": [0.41, 0.52, 0.30], "boundary_miou_5": [0.2, 0.2, 0.2]},
        {"method": "ce+lovasz", "miou": [0.45, 0.55, 0.38], "boundary_miou_5": [0.3, 0.3, 0.3]},
        {"method": "contextrast", "miou": [0.42, 0.49, 0.33], "boundary_miou_5": [0.3, 0.2, 0.1]},
        {"method": "contextrast+lovasz", "miou": [0.46, 0.56, 0.37], "boundary_miou_5": [0] * 3},
    ]
    data = {"source": "here", "protocol_text": "by hand", "orientations": {}}
    data["orientations"]["coronal"] = {"seeds": [0, 1, 2], "rows": rows}
    data["orientations"]["axial"] = {"seeds": [0, 1, 2], "rows": rows[:1] + rows[3:4]}
    path.write_text(json.dumps(data))
    lines = demo.evidence_lines(path)
    assert lines[0].startswith("Evidence (here; by hand)")
    # Δ per seed: Lovász +5, +5, +8 (mean 6, sd 1.73) beats Dice (+1, +2, 0); Contextrast +2,
    # −1, +3 (mean 1.33, sd 2.08); Contextrast + Lovász +6, +6, +7 (mean 6.33, sd 0.58).
    assert lines[1] == (
        "  coronal (3 seeds): CE 40.00; CE + Lovász 46.00 (+6.00 ± 1.73); "
        "Contextrast 41.33 (+1.33 ± 2.08); Contextrast + Lovász 46.33 (+6.33 ± 0.58)"
    )
    assert lines[2] == "  axial (3 seeds): CE 40.00; Contextrast 41.33 (+1.33 ± 2.08)"
    assert "no multi-seed benchmark result" in demo.evidence_lines(tmp_path / "none.json")[0]
    # Several training schedules: one block each, the orientations indented under it.
    adamw = [{**row, "miou": [v + 0.2 for v in row["miou"]]} for row in rows[:1] + rows[3:4]]
    schedules = {
        "SGD 400": {"orientations": data["orientations"]},
        "AdamW 400": {"orientations": {"coronal": {"seeds": [0, 1, 2], "rows": adamw}}},
    }
    path.write_text(json.dumps({**data, "schedules": schedules}))
    lines = demo.evidence_lines(path)
    assert lines[1] == "  SGD 400:" and lines[2].startswith("    coronal (3 seeds): CE 40.00;")
    assert lines[4:] == [
        "  AdamW 400:",
        "    coronal (3 seeds): CE 60.00; Contextrast 61.33 (+1.33 ± 2.08)",
    ]
    # one seed has no sd: it says so
    single = [{**row, "miou": row["miou"][:1]} for row in rows[:1] + rows[3:4]]
    data["orientations"] = {"axial": {"seeds": [0], "rows": single}}
    path.write_text(json.dumps(data))
    want = "  axial (1 seed): CE 40.00; Contextrast 42.00 (+2.00, one seed)"
    assert demo.evidence_lines(path)[1] == want


def test_the_packaged_evidence_is_read_from_inside_the_package():
    assert demo.EVIDENCE.is_relative_to(Path(demo.__file__).parent)
    lines = demo.evidence_lines()
    assert lines[0].startswith("Evidence (docs/benchmarks.md")
    # one block per schedule: its name, then a line per orientation
    schedules = [line for line in lines[1:] if not line.startswith("    ")]
    shipped = json.loads(demo.EVIDENCE.read_text())["schedules"]
    assert [line.strip().removesuffix(":") for line in schedules] == list(shipped)
    assert len(shipped) >= 3 and all(name.split(",")[0] in ("SGD", "AdamW") for name in shipped)
    assert sum(line.startswith("    coronal (") for line in lines) == len(schedules)
    assert any(line.startswith("    coronal (") and "CE + " in line for line in lines[1:])


def test_demo_trains_the_builtin_slices_with_seed_zero():
    overrides = demo.demo_overrides("inia19", "ce", ["optim.iters=2"])
    assert overrides[:3] == ["data.dataset=inia19", "data.root=null", "run.seed=0"]
    region = demo.method_config("inia19", "ce+lovasz", [])
    assert (region.loss.name, region.loss.region.name) == ("ce", "lovasz")
    assert region.run.name == f"inia19_ce_lovasz_{demo.settings_key(region)}"
    assert overrides[-1] == "optim.iters=2"
    config = demo.load_config(demo.SETS["inia19"][0] / "ce.yaml", overrides)
    assert (config.data.dataset, config.data.root, config.run.name) == ("inia19", None, "inia19_ce")
    with pytest.raises(KeyError):
        demo.demo_overrides("voc", "ce", [])
