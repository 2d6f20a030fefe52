"""Write the demo's evidence into the package from the benchmark's results.

    python tools/ship_evidence.py

``make demo`` prints the paired multi-seed INIA19 result next to its own single run; it reads
``contextrast/evidence/inia19.json``, which ships inside the package (so the demo works from
an installed wheel, not only from a source checkout). This copies the per-seed mIoU and
boundary mIoU of each training schedule's results,
``benchmarks/results/inia19_<orientation>_<schedule>.json``, into it (a schedule without
results is left out).
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORIENTATIONS = ("coronal", "sagittal", "axial")
#: schedule (as the demo prints it) → its result files' suffix (docs/benchmarks.md, "The fit
#: curve")
SCHEDULES = {
    "SGD, 400 iterations, lr 0.01 (the paper's optimiser; CE under-fit)": "region",
    "AdamW, 400 iterations, lr 1e-3 (CE fits far better)": "adamw",
    "SGD, 1600 iterations, lr 0.16 (CE well fit, not yet at its plateau)": "sgd1600",
    "SGD, 3200 iterations, lr 0.16 (CE at its plateau)": "sgd_plateau",
    "AdamW, 1600 iterations, lr 2e-3 (CE at its plateau)": "adamw_plateau",
}
TARGET = ROOT / "contextrast" / "evidence" / "inia19.json"
PROTOCOLS = {
    "final": "each run scored by its last evaluation",
    "ema": "each run scored by the moving average of its weights at the end",
}


def orientations_of(suffix: str, protocols: set[str]) -> dict:
    found = {}
    for orientation in ORIENTATIONS:
        path = ROOT / f"benchmarks/results/inia19_{orientation}_{suffix}.json"
        if not path.is_file():
            print(f"skipped {orientation}: no {path.relative_to(ROOT)}")
            continue
        data = json.loads(path.read_text())
        protocols.add(data["protocol"])
        found[orientation] = {
            "seeds": data["seeds"],
            "rows": [
                {key: row[key] for key in ("method", "miou", "boundary_miou_5")}
                for row in data["rows"]
            ],
        }
    return found


def main() -> None:
    schedules, protocols = {}, set()
    for name, suffix in SCHEDULES.items():
        found = orientations_of(suffix, protocols)
        if found:
            schedules[name] = {"orientations": found}
    if len(protocols) != 1:
        raise SystemExit(f"the results mix protocols {sorted(protocols)}: rerun them alike")
    (protocol,) = protocols
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(json.dumps({
        "source": "docs/benchmarks.md, 'The fit curve' and 'Region losses against and with "
                  "Contextrast'",
        "protocol": protocol,
        "protocol_text": PROTOCOLS.get(protocol, protocol),
        "schedules": schedules,
    }, indent=1) + "\n")  # fmt: skip
    print(f"wrote {TARGET.relative_to(ROOT)} ({', '.join(schedules)})")


if __name__ == "__main__":
    main()
