"""``data.name: image_folder``: your own classification data, one folder per class.

Layout under ``data.root``::

    train/<class>/*.jpg      required
    test/<class>/*.jpg       required
    val/<class>/*.jpg        optional; absent: a fixed hold-out from train (below)
    classnames.txt           optional; one "<folder><TAB><class name>" line per class

Every split must hold the same class folders (a class in one split only is an error naming
it), every class folder at least one image (any format PIL decodes). Labels follow the sorted
folder names. A class's name, used in prompts, is its ``classnames.txt`` entry, else the folder
name with ``_`` replaced by spaces. The prompt template is ``a photo of a {}.`` unless
``data.template`` says otherwise.

Without ``val/``, the validation split is taken out of ``train/``: per class, ``round(10%)`` of
its images (at least one when it has two or more), chosen by a generator seeded with the class
folder's name, so the hold-out is the same for every run and seed, and the remaining images
are the training split. Few-shot sampling (``data.num_shots``) and base/new subsets
(``data.subsample_classes``) then work as for the CoOp datasets.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from .readers import list_class_folders, list_class_images, require_dir, require_file
from .records import DataError, DatasetSplits, Datum
from .registry import register_dataset

NAME = "image_folder"
TEMPLATE = "a photo of a {}."
CLASSNAMES_FILE = "classnames.txt"
HOLD_OUT_FRACTION = 0.1
LAYOUT = ("<root>/train/<class>/*, <root>/test/<class>/*, optional <root>/val/<class>/* and "
          "<root>/classnames.txt ('<folder><TAB><name>' lines)")
_HINT = f"expected layout: {LAYOUT}"


def read_classnames_file(path: Path) -> dict[str, str]:
    """``folder<TAB>name`` lines -> {folder: name}; a malformed or repeated line names its number."""
    names: dict[str, str] = {}
    for number, line in enumerate(require_file(path, "class-name file").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        folder, tab, name = line.partition("\t")
        if not tab or not folder.strip() or not name.strip():
            raise DataError(f"{path}, line {number}: expected '<folder><TAB><class name>', got {line!r}")
        if folder.strip() in names:
            raise DataError(f"{path}, line {number}: folder {folder.strip()!r} is listed twice")
        names[folder.strip()] = name.strip()
    return names


def _split_folders(root: Path) -> dict[str, Path]:
    folders = {}
    for split in ("train", "test"):
        folders[split] = require_dir(root / split, f"image_folder {split} split", _HINT)
    if (root / "val").is_dir():
        folders["val"] = root / "val"
    return folders


def _check_same_classes(classes: dict[str, list[str]], root: Path) -> list[str]:
    every = sorted(set().union(*classes.values()))
    for split, present in classes.items():
        if not present:
            raise DataError(f"image_folder split {root / split} holds no class folders; {_HINT}")
    for name in every:
        missing = [split for split, present in classes.items() if name not in present]
        if missing:
            holders = [split for split in classes if split not in missing]
            raise DataError(f"image_folder: class folder {name!r} is in {', '.join(holders)} but not in "
                            f"{', '.join(missing)} (under {root}); every split must hold the same classes")
    return every


def _hold_out(images: list[Path], folder: str) -> tuple[list[Path], list[Path]]:
    """(train, val) of one class: a fixed fraction of its images, chosen by its folder name."""
    if len(images) < 2:
        return images, []
    n_val = max(1, round(HOLD_OUT_FRACTION * len(images)))
    seed = int(hashlib.sha256(folder.encode()).hexdigest()[:16], 16)
    chosen = set(random.Random(seed).sample(range(len(images)), n_val))
    return ([p for i, p in enumerate(images) if i not in chosen], [p for i, p in enumerate(images) if i in chosen])


@register_dataset(NAME, template=TEMPLATE, layout=LAYOUT)
def read_image_folder_dataset(root: Path) -> DatasetSplits:
    root = require_dir(Path(root), "image_folder data root (data.root)", _HINT)
    folders = _split_folders(root)
    classes = _check_same_classes({split: list_class_folders(path) for split, path in folders.items()}, root)
    names_file = root / CLASSNAMES_FILE
    if names_file.exists():
        given = read_classnames_file(names_file)
        unlisted = [c for c in classes if c not in given]
        unknown = [f for f in given if f not in classes]
        if unlisted or unknown:
            raise DataError(f"{names_file} does not match the class folders: "
                            + "; ".join(part for part in (
                                f"no line for {', '.join(map(repr, unlisted[:10]))}" if unlisted else "",
                                f"no folder for {', '.join(map(repr, unknown[:10]))}" if unknown else "") if part))
        classnames = [given[c] for c in classes]
    else:
        classnames = [c.replace("_", " ") for c in classes]

    splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    for label, (folder, classname) in enumerate(zip(classes, classnames)):
        train = list_class_images(folders["train"] / folder)
        if "val" in folders:
            val = list_class_images(folders["val"] / folder)
        else:
            train, val = _hold_out(train, folder)
        splits["train"] += [Datum(str(p), label, classname) for p in train]
        splits["val"] += [Datum(str(p), label, classname) for p in val]
        splits["test"] += [Datum(str(p), label, classname) for p in list_class_images(folders["test"] / folder)]
    return DatasetSplits(splits["train"], splits["val"], splits["test"], classnames)
