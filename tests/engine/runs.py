"""Tiny training runs: a learnable folder dataset and a config dict for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def learnable_folder(root: Path, count: int = 8, size: int = 32) -> Path:
    """Images whose label is decided by the red channel: easy to learn in a few steps."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(count):
            red = (rng.random((size // 8, size // 8)) > 0.5).repeat(8, 0).repeat(8, 1)
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[..., 0] = np.where(red, 220, 20)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{k}.png")
            Image.fromarray(red.astype(np.uint8), mode="L").save(
                root / "labels" / split / f"{k}.png"
            )
    (root / "classes.txt").write_text("dark\nred\n")
    return root


def config(tmp_path: Path, name: str = "run", **sections) -> dict:
    data = {
        "run": {
            "name": name,
            "output_dir": str(tmp_path / "runs"),
            "seed": 3,
            "deterministic": True,
        },
        "model": {"name": "hrnetv2_w18_small"},
        "data": {
            "dataset": "folder",
            "root": str(tmp_path / "data"),
            "crop_size": [32, 32],
            "scale_range": [0.75, 1.25],
            "batch_size": 4,
            "num_workers": 0,
        },
        "loss": {"name": "contextrast", "contrast": {"embed_dim": 16, "max_pixels": 200}},
        "optim": {"lr": 0.05, "iters": 6, "weight_decay": 0.0001},
        "train": {"log_interval": 1, "eval_interval": 100, "checkpoint_interval": 2},
        "eval": {"boundary_widths": [2]},
    }
    for section, values in sections.items():
        data[section].update(values)
    return data


def interrupt_at(iteration: int):
    """An ``on_iteration`` hook that stops the run after ``iteration`` as a Ctrl-C would."""

    def hook(done: int) -> None:
        if done == iteration:
            raise KeyboardInterrupt

    return hook
