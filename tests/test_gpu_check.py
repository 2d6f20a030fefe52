"""benchmarks/gpu_check.py, the one-shot GPU check, runs end to end on the CPU (--quick)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("equality", "gpu_tests", "step", "classes150", "launches", "compile")


def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "x.json"
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"]
    done = subprocess.run(
        [*command, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| case | CE | Contextrast | ratio |" in done.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu_check" and result["device"] == "cpu"
    sections = result["sections"]
    assert set(sections) == set(SECTIONS)
    for name, part in sections.items():
        assert "error" not in part, (name, part["error"])
        for key, sub in part.items():
            assert not (isinstance(sub, dict) and "error" in sub), (name, key, sub)
    assert sections["gpu_tests"]["skipped"] and sections["compile"]["skipped"]

    equality = sections["equality"]
    assert equality["passed"]
    assert set(equality["cases"]) == {
        "float32, hard_negatives=add",
        "float32, hard_negatives=only",
        "bf16, hard_negatives=add",
    }
    for case in equality["cases"].values():
        assert case["passed"] and case["hard_negatives_equal"]
        assert sum(case["hard_negatives"]) > 0  # BANE picked pixels: the comparison covers it

    step = sections["step"]
    assert step["ce"]["ms_per_step"] > 0 and step["contextrast"]["ms_per_step"] > 0
    assert step["time_ratio"] > 0
    assert step["contextrast_pp"]["ms_per_step"] > 0 and step["pp_time_ratio"] > 0

    losses = sections["classes150"]["classes_150"]
    assert losses["ce"]["ms"] > 0 and losses["ce_plus_contextrast"]["ms"] > 0

    launches = sections["launches"]
    for method in ("ce", "contextrast"):
        assert launches[method]["aten_ops"] > 0
    assert launches["aten_ops_added"] > 0  # the loss's own ops

    assert {row["case"] for row in result["rows"]} >= {"step, eager: ms/step"}
