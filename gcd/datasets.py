"""The CIFAR, ImageNet-100 and generic image-folder GCD readers (registered in `gcd.dataset_registry`).

A reader takes the user's dataset folder (plus keyword options) and returns a `RawGCDData`.
The fine-grained readers (cub, scars, aircraft) live in `gcd.fgvc_datasets`.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipcore.classnames import readable_classname
from clipcore.data import DataError, Datum, list_class_folders, require_dir, require_file
from clipcore.data.readers import list_class_images

from .dataset_registry import register_gcd_dataset
from .splits import ArrayImageSource, RawGCDData

# --------------------------------------------------------------------------------------------
# CIFAR (torchvision's python-pickle layout)

_CIFAR_LAYOUTS = {
    # name: (folder, train files, test files, meta file, names key, labels key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names",
                 "fine_labels"),
}
# numpy's array reconstruction is all a CIFAR batch needs (plus `_codecs.encode`, which
# protocol-2 pickles written by Python 3 use for bytes); any other global is refused.
_NUMPY_GLOBALS = {("_codecs", "encode"), ("numpy.core.multiarray", "_reconstruct"),
                  ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayUnpickler(pickle.Unpickler):
    """Admits plain containers, numbers, strings and numpy arrays; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.", 1)  # numpy 2 moved it
        return getattr(importlib.import_module(module), name)


def _read_cifar_pickle(path: Path) -> dict:
    try:
        # latin1: the published batches are Python 2 pickles with byte-string keys.
        data = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a CIFAR python batch file: {err}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict, got {type(data).__name__}")
    return data


def _read_cifar(name: str, root: Path) -> RawGCDData:
    folder_name, train_files, test_files, meta_file, names_key, labels_key = _CIFAR_LAYOUTS[name]
    hint = (f"Expected torchvision's layout: {root}/{folder_name}/{{{', '.join(train_files)}, "
            f"{', '.join(test_files)}, {meta_file}}} (torchvision.datasets."
            f"{name.upper()}(root, download=True) creates it).")
    folder = require_dir(root / folder_name, f"{name} folder", hint)
    meta = _read_cifar_pickle(require_file(folder / meta_file, f"{name} meta file", hint))
    classnames = [readable_classname(str(c)) for c in meta[names_key]]
    arrays: dict[str, np.ndarray] = {}
    labels: dict[str, list[int]] = {}
    for part, files in (("train", train_files), ("test", test_files)):
        chunks, labels[part] = [], []
        for file_name in files:
            batch = _read_cifar_pickle(require_file(folder / file_name, f"{name} batch", hint))
            if "data" not in batch or labels_key not in batch:
                raise DataError(f"{folder / file_name}: missing 'data' or {labels_key!r}")
            chunks.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels[part].extend(int(label) for label in batch[labels_key])
        bad = [label for label in labels[part] if not 0 <= label < len(classnames)]
        if bad:
            raise DataError(f"{folder}: {part} labels {bad[:5]} outside 0..{len(classnames) - 1}")
        arrays[part] = np.ascontiguousarray(np.concatenate(chunks).transpose(0, 2, 3, 1))
        if len(arrays[part]) != len(labels[part]):
            raise DataError(f"{folder}: {part} has {len(arrays[part])} images but "
                            f"{len(labels[part])} labels")
    source = ArrayImageSource(name, arrays)
    items = {part: [Datum(source.path(part, row), label, classnames[label])
                    for row, label in enumerate(part_labels)]
             for part, part_labels in labels.items()}
    return RawGCDData(items["train"], items["test"], classnames, [], [], source)


@register_gcd_dataset("cifar10", layout="<root>/cifar-10-batches-py/ (torchvision format)")
def read_cifar10(root: Path) -> RawGCDData:
    """CIFAR-10: classes 0-4 known, 5-9 novel."""
    raw = _read_cifar("cifar10", root)
    raw.known_classes, raw.unknown_classes = list(range(5)), list(range(5, 10))
    return raw


@register_gcd_dataset("cifar100", layout="<root>/cifar-100-python/ (torchvision format)")
def read_cifar100(root: Path) -> RawGCDData:
    """CIFAR-100 (fine labels): classes 0-79 known, 80-99 novel."""
    raw = _read_cifar("cifar100", root)
    raw.known_classes, raw.unknown_classes = list(range(80)), list(range(80, 100))
    return raw


# --------------------------------------------------------------------------------------------
# ImageNet-100 and generic class-per-folder trees


def imagenet_100_class_indices(seed: int = 0) -> list[int]:
    """The reference's ImageNet-100 draw: `seed(0); sort(choice(range(1000), 100, replace=False))`,
    as indices into the sorted wnid folders."""
    draw = np.random.RandomState(seed).choice(range(1000), size=(100,), replace=False)
    return sorted(int(i) for i in draw)


def _scan_classes(split_dir: Path, folders: Sequence[str], labels: Sequence[int],
                  classnames: Sequence[str]) -> list[Datum]:
    return [Datum(str(path), label, classnames[label])
            for folder, label in zip(folders, labels) for path in list_class_images(split_dir / folder)]


@register_gcd_dataset("imagenet_100", layout="<root>/{train,val}/<wnid>/*.JPEG (1000 wnids)")
def read_imagenet_100(root: Path, classnames_file: str | os.PathLike | None = None) -> RawGCDData:
    """ImageNet-100: the fixed 100-class draw from ImageNet-1k; classes 0-49 known, 50-99 novel.

    Only the 100 drawn class folders are listed, so reading does not walk all of ImageNet.
    Class names come from the reference's `imagenet_classes.txt` (asset) unless given.
    """
    hint = f"Expected ImageFolder trees {root}/train/<wnid>/ and {root}/val/<wnid>/ (1000 each)."
    chosen = imagenet_100_class_indices()
    wnids = {}
    for part in ("train", "val"):
        split_dir = require_dir(root / part, f"ImageNet {part} folder", hint)
        wnids[part] = list_class_folders(split_dir)
        if len(wnids[part]) != 1000:
            raise DataError(f"{split_dir}: expected 1000 class folders (the ImageNet-100 draw "
                            f"indexes the sorted ImageNet-1k wnids), found {len(wnids[part])}. "
                            f"{hint}")
    if classnames_file is None:
        from clipcore.assets import asset_path
        classnames_file = asset_path("spectralgcd/imagenet_classes.txt")
    from clipcore.assets import read_class_list_txt
    all_names = read_class_list_txt(classnames_file)
    if len(all_names) != 1000:
        raise DataError(f"{classnames_file}: expected 1000 ImageNet class names, "
                        f"got {len(all_names)}")
    classnames = [all_names[i].strip() for i in chosen]
    splits = {part: _scan_classes(root / part, [wnids[part][i] for i in chosen], range(100),
                                  classnames) for part in ("train", "val")}
    return RawGCDData(splits["train"], splits["val"], classnames, list(range(50)),
                      list(range(50, 100)))


def _resolve_classes(spec: Sequence, folders: list[str], where: str) -> list[int]:
    """Class folder names or indices (into the sorted folders) -> indices."""
    index = {name: i for i, name in enumerate(folders)}
    resolved = []
    for entry in spec:
        if isinstance(entry, str) and entry in index:
            resolved.append(index[entry])
        elif isinstance(entry, int) and not isinstance(entry, bool) and 0 <= entry < len(folders):
            resolved.append(entry)
        else:
            raise DataError(f"{where}: class {entry!r} is neither a class folder name nor an "
                            f"index below {len(folders)}")
    return resolved


@register_gcd_dataset(
    "image_folder",
    layout="<root>/{train,test}/<class>/*.png + <root>/splits.json "
           '{"known_classes": [...], "unknown_classes": [...]}')
def gcd_image_folder(root: str | os.PathLike, known_classes: Sequence | None = None,
                     unknown_classes: Sequence | None = None) -> RawGCDData:
    """Any class-per-folder dataset: `root/train/<class>/`, `root/test/<class>/`.

    Classes (folder names or indices into the sorted train folders) come from the arguments or,
    when `known_classes` is None, from `root/splits.json` (`known_classes`, optional
    `unknown_classes`); the file's optional `classnames` maps folder -> display name (default:
    the folder name with `_` as space). Unknown classes default to every other train folder, in
    sorted order. Test folders must be a subset of the train folders.
    """
    root = Path(root)
    hint = (f"Expected {root}/train/<class>/<image>, {root}/test/<class>/<image> and, unless "
            f"known_classes is given, {root}/splits.json with 'known_classes'.")
    train_dir = require_dir(root / "train", "GCD train folder", hint)
    test_dir = require_dir(root / "test", "GCD test folder", hint)
    folders = list_class_folders(train_dir)
    spec: dict = {}
    splits_file = root / "splits.json"
    if splits_file.is_file():
        try:
            spec = json.loads(splits_file.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{splits_file} is not valid JSON: {err}") from err
    if known_classes is None:  # explicit classes override splits.json as a whole
        if "known_classes" not in spec:
            raise DataError(f"no known_classes given and none in {splits_file}. {hint}")
        known_classes, unknown_classes = spec["known_classes"], spec.get("unknown_classes")
    known = _resolve_classes(known_classes, folders, f"{root} known_classes")
    unknown = (_resolve_classes(unknown_classes, folders, f"{root} unknown_classes")
               if unknown_classes is not None else
               [i for i in range(len(folders)) if i not in set(known)])
    names = spec.get("classnames", {})
    if isinstance(names, list):  # a list aligned with "classes" (clipcore.synthetic writes this)
        names = dict(zip(spec.get("classes", folders), names))
    classnames = [str(names.get(f, readable_classname(f))) for f in folders]
    test_folders = list_class_folders(test_dir)
    stray = sorted(set(test_folders) - set(folders))
    if stray:
        raise DataError(f"{test_dir}: class folders {stray[:5]} do not exist in {train_dir}")
    train = _scan_classes(train_dir, folders, range(len(folders)), classnames)
    test = _scan_classes(test_dir, test_folders, [folders.index(f) for f in test_folders],
                         classnames)
    return RawGCDData(train, test, classnames, known, unknown)
