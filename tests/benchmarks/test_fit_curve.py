"""benchmarks/fit_curve.py: the gain over CE against CE's own fit, by hand."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import load_tool
from tests.benchmarks.test_run_keys import result


def test_fit_curve_rows_by_hand(tmp_path, capsys):
    fit = load_tool("fit_curve")
    # Schedule "short": two settings, CE 40 and 50; x gains +2, +4 (seed 0) and +0, +2 on each.
    a = result(tmp_path / "a.json", {"ce": {0: 0.40, 1: 0.40}, "x": {0: 0.42, 1: 0.44}})
    b = result(tmp_path / "b.json", {"ce": {0: 0.50, 1: 0.50}, "x": {0: 0.50, 1: 0.52}})
    # Schedule "long": one setting, CE 60, x loses a point on both seeds.
    c = result(tmp_path / "c.json", {"ce": {0: 0.60, 1: 0.60}, "x": {0: 0.59, 1: 0.59}})
    out = tmp_path / "fit.json"
    png = tmp_path / "fit.png"
    fit.main(["--schedule", "short", str(a), str(b), "--schedule", "long", str(c),
              "--out", str(out), "--png", str(png)])  # fmt: skip
    rows = {(r["schedule"], r["method"]): r for r in json.loads(out.read_text())["rows"]}
    short, long = rows["short", "x"], rows["long", "x"]
    assert short["reference_miou"] == pytest.approx(45.0) and short["miou"] == pytest.approx(47.0)
    # Per setting Δ +3 (sd √2) and +1 (sd √2): mean 2, s.e. √(2/2 + 2/2) / 2.
    assert short["delta"] == pytest.approx(2.0) and short["se"] == pytest.approx(2**0.5 / 2)
    assert short["per_file"] == [3.0, 1.0] and short["runs"] == 4
    assert long["delta"] == pytest.approx(-1.0) and long["se"] == pytest.approx(0.0, abs=1e-9)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| short | 45.00 | x | 47.00 | +2.00 ± 0.71 | +3.00, +1.00 |" in capsys.readouterr().out


def test_fit_curve_refuses_one_result_twice_in_a_schedule(tmp_path):
    fit = load_tool("fit_curve")
    a = result(tmp_path / "a.json", {"ce": {0: 0.4}, "x": {0: 0.5}})
    with pytest.raises(SystemExit, match="the same result as"):
        fit.main(["--schedule", "s", str(a), str(a)])


def test_fit_curve_refuses_one_schedule_name_twice(tmp_path):
    fit = load_tool("fit_curve")
    a = result(tmp_path / "a.json", {"ce": {0: 0.4}, "x": {0: 0.5}})
    b = result(tmp_path / "b.json", {"ce": {0: 0.3}, "x": {0: 0.5}})
    with pytest.raises(SystemExit, match="--schedule 's' given twice"):
        fit.main(["--schedule", "s", str(a), "--schedule", "s", str(b)])
