"""Small generated ``data.name=image_folder`` trees (train/, test/, optional val/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["golden_retriever", "tabby_cat", "red_fox"]


def write_image_folder(root: Path, classes=CLASSES, counts=None, formats=("png",), val: bool = False) -> Path:
    """Solid-colour images, a different colour per class, in the formats given (cycled)."""
    counts = counts or {"train": 10, "test": 3}
    if val:
        counts = {**counts, "val": 2}
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 * label + 40, 20, (24, 24, 3)), 0, 255).astype("uint8")
                fmt = formats[i % len(formats)]
                Image.fromarray(pixels).save(folder / f"{i:03d}.{fmt}")
    return root
