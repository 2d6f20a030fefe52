"""Write the demo's evidence into the package from the benchmark's results.

    python tools/ship_evidence.py

``make demo`` prints the paired multi-seed INIA19 result next to its own single run; it reads
``contextrast/evidence/inia19.json``, which ships inside the package (so the demo works from
an installed wheel, not only from a source checkout). This copies the per-seed mIoU and
boundary mIoU of ``benchmarks/results/inia19_<orientation>_region.json`` into it.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {o: ROOT / f"benchmarks/results/inia19_{o}_region.json" for o in
           ("coronal", "sagittal", "axial")}  # fmt: skip
TARGET = ROOT / "contextrast" / "evidence" / "inia19.json"
PROTOCOLS = {
    "final": "each run scored by its last evaluation",
    "ema": "each run scored by the moving average of its weights at the end",
}


def main() -> None:
    orientations, protocols = {}, set()
    for orientation, path in SOURCES.items():
        if not path.is_file():
            print(f"skipped {orientation}: no {path.relative_to(ROOT)}")
            continue
        data = json.loads(path.read_text())
        protocols.add(data["protocol"])
        orientations[orientation] = {
            "seeds": data["seeds"],
            "rows": [
                {key: row[key] for key in ("method", "miou", "boundary_miou_5")}
                for row in data["rows"]
            ],
        }
    if len(protocols) != 1:
        raise SystemExit(f"the results mix protocols {sorted(protocols)}: rerun them alike")
    (protocol,) = protocols
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(json.dumps({
        "source": "docs/benchmarks.md, 'Region losses against and with Contextrast'",
        "protocol": protocol,
        "protocol_text": PROTOCOLS.get(protocol, protocol),
        "orientations": orientations,
    }, indent=1) + "\n")  # fmt: skip
    print(f"wrote {TARGET.relative_to(ROOT)} ({', '.join(orientations)})")


if __name__ == "__main__":
    main()
