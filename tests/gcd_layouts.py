"""A tiny GCD ``image_folder`` dataset and concept dictionary written into ``tmp_path``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

GCD_CLASSES = ["red_apple", "green_leaf", "blue_sky", "yellow_sun", "purple_plum", "grey_rock"]
GCD_KNOWN = GCD_CLASSES[:4]
_COLOURS = [(200, 30, 30), (30, 180, 40), (40, 90, 220), (230, 210, 30), (130, 40, 160), (120, 120, 120)]
CONCEPTS = ["fruit", "tree", "ocean", "cloud", "flower", "stone", "car", "bird", "grass", "snow",
            "Fruit", "fire", "lemon", "violet", "mountain", "road", "river", "desert", "night", "ice"]


def write_gcd_image_folder(root: Path, n_train: int = 6, n_test: int = 2, size: int = 36,
                           classes=GCD_CLASSES, known=GCD_KNOWN) -> Path:
    """``root/{train,test}/<class>/<i>.png`` (a class colour plus noise) and ``splits.json``."""
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        for name, colour in zip(classes, _COLOURS):
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255)
                path = root / part / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
    (root / "splits.json").write_text(json.dumps({"known_classes": list(known)}))
    return root


def write_dictionary(path: Path, names=CONCEPTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ClassName"])
        writer.writerows([n] for n in names)
    return path
