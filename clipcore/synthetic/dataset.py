"""Registers ``data.name: shapeworld``: the synthetic world in the CoOp layout.

The folder is written by ``./run.sh demo`` or ``python -m clipcore.synthetic.write --root DIR``
(``write_coop_layout``); this module only reads it, with the same reader as the real CoOp
datasets.
"""
from __future__ import annotations

from pathlib import Path

from clipcore.data import DatasetSplits, classnames_from_items, read_coop_split_json, register_dataset, require_dir
from clipcore.synthetic.layouts import COOP_SPLIT_FILE

DATASET_FOLDER = "shapeworld"
TEMPLATE = "a photo of a {}."


def _hint(root: Path) -> str:
    return (f"ShapeWorld is generated, not downloaded: run `./run.sh demo` (writes it under the "
            f"clipcore cache) or `python -m clipcore.synthetic.write --root {root}`, and pass that "
            f"root as data.root.")


@register_dataset(
    "shapeworld", template=TEMPLATE,
    layout=f"<root>/{DATASET_FOLDER}/{COOP_SPLIT_FILE} and images under <root>/{DATASET_FOLDER}/images/",
)
def read_shapeworld(root: Path) -> DatasetSplits:
    """ShapeWorld's 48 colour x shape classes from ``root/shapeworld`` (CoOp layout)."""
    root = Path(root)
    hint = _hint(root)
    dataset_dir = require_dir(root / DATASET_FOLDER, "shapeworld dataset folder", hint)
    image_dir = require_dir(dataset_dir / "images", "shapeworld image folder", hint)
    parts = read_coop_split_json(dataset_dir / COOP_SPLIT_FILE, image_dir, hint)
    return DatasetSplits(parts["train"], parts["val"], parts["test"],
                         classnames_from_items(parts["train"], parts["val"], parts["test"],
                                               source=f"shapeworld ({dataset_dir / COOP_SPLIT_FILE})"))
